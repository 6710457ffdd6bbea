// Loopback-only OpenID Provider for hoopctl's tests.
//
// Built on panva's `oidc-provider` with the OAuth 2.0 Device Authorization
// Grant (RFC 8628) enabled, a public client `hoopctl`, three fixed accounts and
// a minimal login/consent interaction UI (node:http only, no express) that does
// check passwords.
//
// Configuration (argv wins over env):
//   --port N                 IDP_PORT                 0 = pick a free port (default 0)
//   --host H                 IDP_HOST                 listen address (default 127.0.0.1, loopback only)
//   --id-token-ttl S         IDP_ID_TOKEN_TTL         seconds (default 3600)
//   --access-token-ttl S     IDP_ACCESS_TOKEN_TTL     seconds (default 3600)
//   --refresh-token-ttl S    IDP_REFRESH_TOKEN_TTL    seconds (default 86400)
//   --device-code-ttl S      IDP_DEVICE_CODE_TTL      seconds (default 600)
//   --client-id ID           IDP_CLIENT_ID            default "hoopctl"
//
// When listening it prints one line to stdout: `LISTENING http://127.0.0.1:PORT`
// (the issuer). Everything else goes to stderr.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '::1']);

function intOption(value, name, fallback) {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    throw new Error(`invalid value for ${name}: ${value}`);
  }
  return n;
}

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    'id-token-ttl': { type: 'string' },
    'access-token-ttl': { type: 'string' },
    'refresh-token-ttl': { type: 'string' },
    'device-code-ttl': { type: 'string' },
    'client-id': { type: 'string' },
  },
  strict: true,
});

const env = process.env;
const CONFIG = {
  port: intOption(argv.port ?? env.IDP_PORT, 'port', 0),
  host: argv.host ?? env.IDP_HOST ?? '127.0.0.1',
  idTokenTtl: intOption(argv['id-token-ttl'] ?? env.IDP_ID_TOKEN_TTL, 'id-token-ttl', 3600),
  accessTokenTtl: intOption(argv['access-token-ttl'] ?? env.IDP_ACCESS_TOKEN_TTL, 'access-token-ttl', 3600),
  refreshTokenTtl: intOption(argv['refresh-token-ttl'] ?? env.IDP_REFRESH_TOKEN_TTL, 'refresh-token-ttl', 86400),
  deviceCodeTtl: intOption(argv['device-code-ttl'] ?? env.IDP_DEVICE_CODE_TTL, 'device-code-ttl', 600),
  clientId: argv['client-id'] ?? env.IDP_CLIENT_ID ?? 'hoopctl',
};

if (!LOOPBACK_HOSTS.has(CONFIG.host)) {
  throw new Error(`refusing to listen on non-loopback host ${CONFIG.host}`);
}

// ---------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------

const ACCOUNTS = new Map([
  ['alice', {
    password: 'alice-password',
    name: 'Alice Example',
    email: 'alice@example.test',
    groups: ['engineers', 'dba'],
  }],
  ['bob', {
    password: 'bob-password',
    name: 'Bob Example',
    email: 'bob@example.test',
    groups: ['approvers', 'engineers'],
  }],
  ['carol', {
    password: 'carol-password',
    name: 'Carol Example',
    email: 'carol@example.test',
    groups: ['contractors'],
  }],
  // An automation's account that logs in like a person: only its hoop_agent claim tells it
  // apart (for brokers with [oidc] agent_claim = "hoop_agent").
  ['ci-bot', {
    password: 'ci-bot-password',
    name: 'CI Bot',
    email: 'ci-bot@example.test',
    groups: ['engineers'],
    hoopAgent: true,
  }],
]);

// A confidential client for agents: the OAuth 2.0 client credentials grant gives it a JWT
// access token for the broker's audience, with the groups an IdP would map to the client.
const AGENT_CLIENT = {
  id: 'hoop-agent',
  secret: 'hoop-agent-secret',
  groups: ['dba', 'engineers'],
};
const BROKER_RESOURCE = 'urn:hoop:broker';

function passwordMatches(expected, given) {
  const a = Buffer.from(String(expected));
  const b = Buffer.from(String(given ?? ''));
  return a.length === b.length && timingSafeEqual(a, b);
}

async function findAccount(ctx, sub) {
  const account = ACCOUNTS.get(sub);
  if (!account) return undefined;
  return {
    accountId: sub,
    // oidc-provider filters these by the granted scopes/claims.
    async claims() {
      return {
        sub,
        preferred_username: sub,
        name: account.name,
        email: account.email,
        email_verified: true,
        groups: [...account.groups],
        ...(account.hoopAgent ? { hoop_agent: true } : {}),
      };
    },
  };
}

// ---------------------------------------------------------------------------
// Keys: a fresh RS256 signing key per process.
// ---------------------------------------------------------------------------

function makeSigningJwk() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `test-${randomUUID()}`, alg: 'RS256', use: 'sig' };
}

// ---------------------------------------------------------------------------
// Minimal HTML for the interaction pages.
// ---------------------------------------------------------------------------

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>`;
}

function loginPage(uid, clientId, error) {
  return page('Sign-in', `${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<p>Sign in to continue to <strong>${esc(clientId)}</strong>.</p>
<form id="login" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <input type="text" name="username" placeholder="Username" autofocus required>
  <input type="password" name="password" placeholder="Password" required>
  <button type="submit">Sign-in</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort">
  <button type="submit">Cancel</button>
</form>`);
}

function consentPage(uid, clientId, accountId, scopes, claims) {
  const items = scopes.map((s) => `<li>${esc(s)}</li>`).join('');
  const claimItems = claims.map((c) => `<li>${esc(c)}</li>`).join('');
  return page('Authorize', `<p>Signed in as <strong id="account">${esc(accountId)}</strong>.</p>
<p><strong>${esc(clientId)}</strong> is requesting:</p>
<ul id="scopes">${items}</ul>
${claimItems ? `<ul id="claims">${claimItems}</ul>` : ''}
<form id="confirm" method="post" action="/interaction/${esc(uid)}/confirm">
  <button type="submit" autofocus>Continue</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort">
  <button type="submit">Deny</button>
</form>`);
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// ---------------------------------------------------------------------------
// Interaction handler: /interaction/:uid[/login|/confirm|/abort]
// ---------------------------------------------------------------------------

async function handleInteraction(provider, req, res, uid, action) {
  const method = req.method;

  if (!action && method === 'GET') {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) return send(res, 400, page('Error', '<p>interaction mismatch</p>'));
    const { prompt, params, session } = details;
    if (prompt.name === 'login') {
      return send(res, 200, loginPage(uid, params.client_id));
    }
    if (prompt.name === 'consent') {
      const scopes = String(params.scope ?? '').split(' ').filter(Boolean);
      const claims = prompt.details.missingOIDCClaims ?? [];
      return send(res, 200, consentPage(uid, params.client_id, session?.accountId, scopes, claims));
    }
    return send(res, 400, page('Error', `<p>unknown prompt ${esc(prompt.name)}</p>`));
  }

  if (method !== 'POST') {
    res.statusCode = 405;
    return res.end();
  }

  if (action === 'login') {
    const form = await readForm(req);
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid || details.prompt.name !== 'login') {
      return send(res, 400, page('Error', '<p>not a login prompt</p>'));
    }
    const username = form.get('username') ?? '';
    const password = form.get('password') ?? '';
    const account = ACCOUNTS.get(username);
    if (!account || !passwordMatches(account.password, password)) {
      return send(res, 401, loginPage(uid, details.params.client_id, 'Invalid username or password.'));
    }
    return provider.interactionFinished(
      req,
      res,
      { login: { accountId: username } },
      { mergeWithLastSubmission: false },
    );
  }

  if (action === 'confirm') {
    await readForm(req);
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid || details.prompt.name !== 'consent') {
      return send(res, 400, page('Error', '<p>not a consent prompt</p>'));
    }
    const { prompt: { details: missing }, params, session: { accountId } } = details;
    let { grantId } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });

    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    grantId = await grant.save();

    const consent = {};
    if (!details.grantId) consent.grantId = grantId;
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }

  if (action === 'abort') {
    await readForm(req);
    return provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false },
    );
  }

  res.statusCode = 404;
  return res.end();
}

// ---------------------------------------------------------------------------
// Provider + server
// ---------------------------------------------------------------------------

function buildProvider(issuer) {
  const configuration = {
    clients: [{
      client_id: CONFIG.clientId,
      client_name: 'hoopctl',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: 'RS256',
    }, {
      client_id: AGENT_CLIENT.id,
      client_secret: AGENT_CLIENT.secret,
      client_name: 'an agent',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    }],
    findAccount,
    jwks: { keys: [makeSigningJwk()] },
    cookies: {
      // Signed cookies; plain http on loopback so no `secure` flag.
      keys: [randomBytes(32).toString('hex')],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups', 'hoop_agent'],
    },
    // Put the scope-derived claims into the ID token even though an access
    // token is issued alongside it (the broker reads groups from the ID token).
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      userinfo: { enabled: true },
      clientCredentials: { enabled: true },
      // Client credentials tokens are JWTs for the broker (aud = the broker's audience, the
      // hoopctl client id); the device flow's tokens are unchanged (no resource asked).
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client) => (
          client?.clientId === AGENT_CLIENT.id ? BROKER_RESOURCE : undefined),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          if (resource !== BROKER_RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: '',
            audience: CONFIG.clientId,
            accessTokenFormat: 'jwt',
            accessTokenTTL: CONFIG.accessTokenTtl,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => (
      token.clientId === AGENT_CLIENT.id && !token.accountId ? { groups: [...AGENT_CLIENT.groups] } : undefined),
    // Always issue refresh tokens to clients allowed to use the grant
    // (the default requires offline_access in the granted scopes).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Keep refresh tokens usable regardless of session expiry.
    expiresWithSession: async () => false,
    rotateRefreshToken: true,
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    ttl: {
      AccessToken: CONFIG.accessTokenTtl,
      IdToken: CONFIG.idTokenTtl,
      DeviceCode: CONFIG.deviceCodeTtl,
      RefreshToken: CONFIG.refreshTokenTtl,
      Grant: Math.max(CONFIG.refreshTokenTtl, 3600),
      Interaction: 600,
      Session: 3600,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([k, v]) => `<p class="${esc(k)}">${esc(k)}: ${esc(v)}</p>`).join('\n'));
    },
  };

  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`idp server_error: ${err?.stack ?? err}\n`);
  });
  return provider;
}

const server = createServer();
server.on('error', (err) => {
  process.stderr.write(`idp listen error: ${err?.stack ?? err}\n`);
  process.exit(2);
});

server.listen(CONFIG.port, CONFIG.host, () => {
  const { port } = server.address();
  const hostPart = CONFIG.host.includes(':') ? `[${CONFIG.host}]` : CONFIG.host;
  const issuer = `http://${hostPart}:${port}`;
  const provider = buildProvider(issuer);
  const callback = provider.callback();

  server.on('request', (req, res) => {
    const { pathname } = new URL(req.url, issuer);
    const m = pathname.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?\/?$/);
    if (!m) {
      callback(req, res);
      return;
    }
    handleInteraction(provider, req, res, decodeURIComponent(m[1]), m[2]).catch((err) => {
      const known = err instanceof errors.OIDCProviderError;
      if (!known) process.stderr.write(`idp interaction error: ${err?.stack ?? err}\n`);
      if (!res.headersSent) {
        send(res, known ? (err.statusCode || 400) : 500,
          page('Error', `<p class="error">${esc(err?.error ?? 'server_error')}: ${esc(err?.error_description ?? err?.message)}</p>`));
      } else {
        res.end();
      }
    });
  });

  process.stdout.write(`LISTENING ${issuer}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
