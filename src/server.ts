import { existsSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import { loadConfig, ConfigError } from '../config/schema.ts'
import { buildApp } from './app.ts'

// Thin entry: configuration, the app, listen, and a graceful close on signals.
if (existsSync('.env')) process.loadEnvFile('.env')

let config
try {
  config = loadConfig(process.env)
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`gateway: ${err.message}\n`)
    process.exit(78) // EX_CONFIG
  }
  throw err
}

const app = await buildApp({
  config,
  logger: {
    level: config.logLevel,
    redact: ['req.headers.authorization', 'req.headers["payment-signature"]', 'req.headers["x-payment"]', 'req.headers["sign-in-with-x"]'],
    ...(config.logPretty && process.stdout.isTTY ? { transport: { target: 'pino-pretty' } } : {}),
  },
})

closeWithGrace({ delay: 30_000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'closing after error')
  else app.log.info({ signal }, 'closing')
  await app.close()
})

await app.listen({ port: config.port, host: config.host })
