// An OpenID Connect provider (panva's oidc-provider) on 127.0.0.1, for tests/client_assertion.rs.
//
// It generates an RSA key, an EC P-256 key and a key nobody registered, and serves three clients
// allowed the client_credentials grant:
//   rs256-client  private_key_jwt, the RSA key's public JWK (kid "rsa-1")
//   es256-client  private_key_jwt, the EC key's public JWK (kid "ec-1")
//   hs256-client  client_secret_jwt, a random secret
// Its first line on stdout is JSON: the token URL, the private keys (PKCS#8 PEM) and the secret.
// It stops when its stdin closes (the test dropped it).
//
// Run: OIDC_PROVIDER_DIR=<dir from .ci/get-oidc-provider> node tests/oidc/server.mjs
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.env.OIDC_PROVIDER_DIR;
if (!dir) {
  console.error('OIDC_PROVIDER_DIR is not set: run .ci/get-oidc-provider');
  process.exit(2);
}
const pkgDir = join(dir, 'node_modules', 'oidc-provider');
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const { default: Provider } = await import(pathToFileURL(join(pkgDir, pkg.main)).href);

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const wrong = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const pem = (pair) => pair.privateKey.export({ type: 'pkcs8', format: 'pem' });
const jwk = (pair, kid, alg) => ({ ...pair.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' });
const secret = randomBytes(32).toString('hex');

const client = (id, extra) => ({
  client_id: id,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...extra,
});

let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = createServer((req, res) => handler(req, res));
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      client('rs256-client', {
        token_endpoint_auth_method: 'private_key_jwt',
        jwks: { keys: [jwk(rsa, 'rsa-1', 'RS256')] },
      }),
      client('es256-client', {
        token_endpoint_auth_method: 'private_key_jwt',
        jwks: { keys: [jwk(ec, 'ec-1', 'ES256')] },
      }),
      client('hs256-client', {
        token_endpoint_auth_method: 'client_secret_jwt',
        client_secret: secret,
      }),
    ],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
    },
    scopes: ['api:read'],
    cookies: { keys: [randomBytes(32).toString('hex')] },
  });
  provider.on('grant.error', (_ctx, error) => console.error(`grant.error: ${error.message} ${error.error_description ?? ''}`));
  handler = provider.callback();
  console.log(JSON.stringify({
    token_url: `${issuer}/token`,
    rsa_pem: pem(rsa),
    ec_pem: pem(ec),
    wrong_pem: pem(wrong),
    secret,
  }));
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
