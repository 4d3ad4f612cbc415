import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyPluginCallback, FastifyRequest } from 'fastify';
import fastifyPlugin from 'fastify-plugin';
import { ValidationError } from '../errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route answers without a token (probes, scrapers, the API description). */
    open?: boolean;
  }
}

/** The shortest token accepted: shorter ones are guessable, or a slip (`TALLY_API_TOKEN=' '`). */
export const minTokenLength = 16;

/**
 * The tokens of `TALLY_API_TOKEN` (comma-separated, for rotation). Unset or empty means no
 * authentication; anything else must be a list of tokens of at least `minTokenLength`
 * characters with no spaces, so that `' '`, `','` or `'a,'` cannot switch authentication off.
 */
export function parseTokens(raw: string | undefined): string[] {
  if (raw === undefined || raw === '') return [];
  const tokens = raw.split(',').map((token) => token.trim());
  tokens.forEach((token, index) => {
    if (token.length < minTokenLength || /\s/.test(token) || /[^\x21-\x7e]/.test(token)) {
      throw new ValidationError(
        `TALLY_API_TOKEN: token ${index + 1} of ${tokens.length} is ${token === '' ? 'empty' : 'not valid'}; ` +
          `each comma-separated token must be at least ${minTokenLength} printable ASCII ` +
          'characters without spaces (unset the variable to run without authentication).',
      );
    }
  });
  return tokens;
}

/** Compares in constant time, whatever the lengths, by comparing digests. */
function sameSecret(given: string, expected: string): boolean {
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** The credentials of an `Authorization` header: the scheme is case-insensitive (RFC 7235). */
function bearerToken(header: string | undefined): string | undefined {
  const match = /^bearer +(\S+) *$/i.exec(header ?? '');
  return match?.[1];
}

/** Whether the request carries one of `tokens` (true when there are none to carry). */
export function isAuthenticated(request: FastifyRequest, tokens: readonly string[]): boolean {
  if (tokens.length === 0) return true;
  const given = bearerToken(request.headers.authorization) ?? '';
  // Every token is compared, so the time taken does not tell which one nearly matched.
  return tokens.map((token) => sameSecret(given, token)).includes(true);
}

/**
 * Who sent a request, for records such as a deletion's: the token's place in
 * `TALLY_API_TOKEN` (never the token) and the client's address.
 */
export function callerOf(request: FastifyRequest, tokens: readonly string[]): string {
  if (tokens.length === 0) return `http:unauthenticated@${request.ip}`;
  const given = bearerToken(request.headers.authorization) ?? '';
  const index = tokens.findIndex((token) => sameSecret(given, token));
  return `http:token-${index + 1}@${request.ip}`;
}

/**
 * Authorises on the route that matched, never on the URL string: the router decodes `%76` to
 * `v` and accepts absolute-form targets, so no prefix test on `request.url` can be trusted.
 * Deny by default: only routes marked `config: { open: true }` skip the check; everything
 * else, unmatched paths included, needs a token.
 */
const authorisation: FastifyPluginCallback<{ tokens: readonly string[] }> = (
  app,
  { tokens },
  registered,
) => {
  if (tokens.length > 0) {
    app.addHook('onRequest', (request, _reply, done) => {
      if (request.routeOptions.config.open === true || isAuthenticated(request, tokens)) {
        done();
        return;
      }
      done(Object.assign(new Error('unauthorized'), { statusCode: 401 }));
    });
  }
  registered();
};
export const requireTokens = fastifyPlugin(authorisation, { name: 'tally-authorisation' });
