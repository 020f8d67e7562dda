# syntax=docker/dockerfile:1
# Gateway image. Not built in this repository's CI (no Docker engine there); see README.

FROM node:20-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; better-sqlite3 compiles (or fetches its prebuild) here, with the
# toolchain this stage has and the runtime stage does not.
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production PORT=8402 HOST=0.0.0.0 DATABASE_URL=sqlite:/data/gateway.db
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY src ./src
COPY plugins ./plugins
COPY routes ./routes
COPY config ./config
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8402
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||8402)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# tini reaps zombies and forwards SIGTERM so the gateway can drain (close-with-grace).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "--import", "tsx", "src/server.ts"]
