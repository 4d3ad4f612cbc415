import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { ValidationError } from '../errors.js';

/** A host and port of a seed node or a sentinel. */
export interface RedisAddress {
  host: string;
  port: number;
}

/**
 * Where Tally's Redis is, from a connection string:
 * - `redis://` / `rediss://`: one server (ioredis parses the URL itself);
 * - `redis+cluster://h1:p1,h2:p2`: seeds of a Redis Cluster;
 * - `redis+sentinel://h1:p1,h2:p2/mymaster`: a Sentinel set and the name of the primary it
 *   watches.
 * Credentials (`user:password@`) are the Redis servers'; `rediss+…` turns TLS on. A Sentinel
 * set with its own password takes `?sentinelPassword=` (and `sentinelUsername=`).
 */
export type RedisTarget =
  | { topology: 'single'; url: string }
  | { topology: 'cluster'; seeds: RedisAddress[]; credentials: Credentials; tls: boolean }
  | {
      topology: 'sentinel';
      sentinels: RedisAddress[];
      primaryName: string;
      credentials: Credentials;
      /** The sentinels' own, from the query string. */
      sentinelCredentials: { sentinelUsername?: string; sentinelPassword?: string };
      tls: boolean;
    };

export type RedisTopology = RedisTarget['topology'];

interface Credentials {
  username?: string;
  password?: string;
}

const defaultPorts = { cluster: 6379, sentinel: 26379 } as const;

/** What every error names: the forms accepted. Never the string itself (it may hold a password). */
const accepted =
  'redis://host:port (one server), redis+cluster://host1:port1,host2:port2 (a Redis Cluster) ' +
  'or redis+sentinel://host1:port1,host2:port2/primary-name (Sentinel); rediss… for TLS and ' +
  'user:password@ before the hosts if the servers need them';

function invalid(name: string, why: string): ValidationError {
  return new ValidationError(`${name} is not a valid URL (${why}): use ${accepted}.`);
}

function decoded(part: string, name: string): string | undefined {
  if (part === '') return undefined;
  try {
    return decodeURIComponent(part);
  } catch {
    throw invalid(name, 'a %-escape in its credentials is malformed');
  }
}

/**
 * `[v6]:port` or `host:port` (the port may be left out), the host a name or an IPv4 address.
 * Named by its place in the list, never quoted: a password with an unescaped `@` or `/` lands
 * here, and must not be echoed.
 */
function address(
  text: string,
  place: number,
  topology: 'cluster' | 'sentinel',
  name: string,
): RedisAddress {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{1,5}))?$/.exec(text);
  const host = match?.[1] ?? match?.[2];
  const port = match?.[3] === undefined ? defaultPorts[topology] : Number(match[3]);
  if (host === undefined || port < 1 || port > 65535) {
    throw invalid(
      name,
      `host ${place} of the list is not host:port (a password with @, / or ? must be %-escaped)`,
    );
  }
  return { host, port };
}

function singleServer(raw: string, name: string): RedisTarget {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw invalid(name, 'it does not parse as a URL');
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw invalid(
      name,
      `its scheme ${JSON.stringify(url.protocol.slice(0, -1))} is not one of Redis'`,
    );
  }
  if (url.hostname === '') throw invalid(name, 'it names no host');
  // ioredis decodes the credentials; a bad %-escape there failed later, as exit 3.
  decoded(url.username, name);
  decoded(url.password, name);
  return { topology: 'single', url: raw };
}

/** Parses and checks a connection string before anything connects (a typo is exit 2, not 3). */
export function parseRedisUrl(raw: string, name = 'REDIS_URL'): RedisTarget {
  const scheme = /^(rediss?)\+(cluster|sentinel):\/\//i.exec(raw);
  if (scheme === null) return singleServer(raw, name);
  const tls = scheme[1]?.toLowerCase() === 'rediss';
  const topology = scheme[2]?.toLowerCase() === 'cluster' ? 'cluster' : 'sentinel';
  const rest = raw.slice(scheme[0].length);
  // The authority ends at the first / ? or #; in it, the credentials end at the last @ (as
  // the WHATWG URL parser reads them).
  const authorityEnd = /[/?#]|$/.exec(rest)?.index ?? rest.length;
  const authority = rest.slice(0, authorityEnd);
  const at = authority.lastIndexOf('@');
  const userinfo = at < 0 ? '' : authority.slice(0, at);
  const hostList = authority.slice(at + 1);
  const parts = /^(?:\/([^?#]*))?(?:\?([^#]*))?$/.exec(rest.slice(authorityEnd));
  if (parts === null) throw invalid(name, 'it does not parse');
  const [, path = '', query = ''] = parts;
  const [user = '', ...password] = userinfo.split(':');
  const username = decoded(user, name);
  const secret = decoded(password.join(':'), name);
  const credentials: Credentials = {
    ...(username === undefined ? {} : { username }),
    ...(secret === undefined ? {} : { password: secret }),
  };
  if (hostList === '') throw invalid(name, 'it names no host');
  const nodes = hostList.split(',').map((text, i) => address(text, i + 1, topology, name));
  const params = new URLSearchParams(query);
  if (topology === 'cluster') {
    if (path !== '') throw invalid(name, 'a cluster has no database or name after the hosts');
    if (params.size > 0) throw invalid(name, 'a cluster takes no parameters');
    return { topology, seeds: nodes, credentials, tls };
  }
  const primaryName = decoded(path, name);
  if (primaryName === undefined || primaryName.includes('/')) {
    throw invalid(name, 'a Sentinel string ends with /<name of the primary>');
  }
  const sentinelCredentials: Record<string, string> = {};
  for (const [key, value] of params) {
    if (key !== 'sentinelUsername' && key !== 'sentinelPassword') {
      throw invalid(name, `it has the unknown parameter ${JSON.stringify(key)}`);
    }
    sentinelCredentials[key] = value;
  }
  return { topology, sentinels: nodes, primaryName, credentials, sentinelCredentials, tls };
}

/** ioredis' per-server options (its RedisOptions, less a field its own types cannot take back). */
type ServerOptions = Omit<RedisOptions, 'replyMapping'>;

/**
 * Opens a connection to `target` with `options` on every server connection. A cluster gets
 * `clusterOptions` besides; a Sentinel set's connections to its sentinels get the sentinel
 * credentials.
 */
export function connectRedis(
  target: RedisTarget,
  options: ServerOptions,
  clusterOptions: ClusterOptions = {},
): Redis | Cluster {
  switch (target.topology) {
    case 'single':
      return new Redis(target.url, options);
    case 'cluster':
      return new Cluster(target.seeds, {
        ...clusterOptions,
        redisOptions: { ...options, ...target.credentials, ...(target.tls ? { tls: {} } : {}) },
      });
    case 'sentinel':
      return new Redis({
        ...options,
        ...target.credentials,
        sentinels: target.sentinels,
        name: target.primaryName,
        ...target.sentinelCredentials,
        // Moves to the new primary as soon as the sentinels announce it (+switch-master). Without
        // it the connection stayed on the replaced primary, which went on taking writes for 5 s
        // and more after a SENTINEL FAILOVER, every one of them lost when it was demoted.
        failoverDetector: true,
        ...(target.tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
      });
  }
}
