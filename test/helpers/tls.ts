export * from '../../local-stack/certs.ts'
