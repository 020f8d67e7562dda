// Enclave-style certificates from the openssl CLI (node:crypto can parse X.509 but cannot issue
// it). Used by the local stack (HTTPS reference backend) and the TLS tests.
import { execFileSync } from 'node:child_process'
import { X509Certificate, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TestCert {
  certPem: string
  certDer: Buffer
  keyPem: string
}

export interface CertOptions {
  /** Put into the subjectAltName (and CN); enclaves are reached by IP. */
  ip?: string
  days?: number
  /** Issue from this CA instead of self-signing. */
  issuer?: TestCert
  /** Make a CA certificate (for `issuer`). */
  ca?: boolean
}

function openssl (dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
}

/** EC P-256 keys keep generation fast; the certificate's key type does not matter to pinning. */
export function makeCert ({ ip = '127.0.0.1', days = 7, issuer, ca = false }: CertOptions = {}): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'test-cert-'))
  try {
    const ext = ca
      ? ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign']
      : [`subjectAltName=IP:${ip}`, 'basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth']
    const subject = ca ? `/CN=Test CA ${Math.random().toString(36).slice(2)}` : `/CN=${ip}`
    const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'key.pem']
    if (!issuer) {
      openssl(dir, ['req', '-x509', ...newKey, '-out', 'cert.pem', '-days', String(days), '-subj', subject, ...ext.flatMap((e) => ['-addext', e])])
    } else {
      writeFileSync(join(dir, 'ca.pem'), issuer.certPem)
      writeFileSync(join(dir, 'ca-key.pem'), issuer.keyPem)
      writeFileSync(join(dir, 'ext.cnf'), ext.join('\n') + '\n')
      openssl(dir, ['req', '-new', ...newKey, '-out', 'req.csr', '-subj', subject])
      openssl(dir, ['x509', '-req', '-in', 'req.csr', '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'cert.pem', '-days', String(days), '-extfile', 'ext.cnf'])
    }
    const certPem = readFileSync(join(dir, 'cert.pem'), 'utf8')
    return { certPem, certDer: Buffer.from(new X509Certificate(certPem).raw), keyPem: readFileSync(join(dir, 'key.pem'), 'utf8') }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

export interface SigningKey {
  publicKeyDer: Buffer
  publicKeyPem: string
  privateKey: KeyObject
}

/** An enclave-style RSA signing key; its DER SPKI is what the registry stores and hashes into the teeId. */
export function makeSigningKey (modulusLength = 2048): SigningKey {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength })
  return {
    publicKeyDer: publicKey.export({ format: 'der', type: 'spki' }),
    publicKeyPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    privateKey,
  }
}
