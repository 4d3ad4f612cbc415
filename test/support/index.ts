// The test harness every test builds on: real Redis and PostgreSQL servers, private to the run.
export { startRedis, type RedisHandle, type RedisPersistence } from './redis-server.js';
export { startPostgres, type PostgresHandle, type PostgresStopMode } from './postgres-server.js';
export { createDatabase } from './shared-postgres.js';
export { waitFor } from './wait-for.js';
