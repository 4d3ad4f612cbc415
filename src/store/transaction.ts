import pg from 'pg';

/**
 * A connection lost while a client is checked out surfaces as the query that fails; the client's
 * own 'error' event carries nothing more, but without a listener it would end the process (the
 * pool's listener covers idle clients only).
 */
function ignoreHeldClientError(): void {
  // deliberately empty: see above
}

/**
 * Runs `use` on a client of its own: checked out of the pool (a URL opens and ends a client),
 * listened to while held, and given back — destroyed rather than reused when `use` failed, since
 * a client that broke mid-statement may be in any state.
 */
export async function withClient<T>(
  db: string | pg.Pool,
  use: (client: pg.ClientBase) => Promise<T>,
): Promise<T> {
  if (typeof db === 'string') {
    const client = new pg.Client({ connectionString: db });
    client.on('error', ignoreHeldClientError);
    try {
      await client.connect();
      return await use(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  const { client, release } = await checkOut(db);
  let failure: Error | undefined;
  try {
    return await use(client);
  } catch (error) {
    failure = error instanceof Error ? error : new Error(String(error));
    throw error;
  } finally {
    release(failure);
  }
}

/**
 * A client of the pool held by a caller that outlives one callback (a stream of rows): listened
 * to while held; `release` gives it back, or destroys it when given the failure that broke it.
 */
export async function checkOut(
  pool: pg.Pool,
): Promise<{ client: pg.PoolClient; release: (failure?: Error) => void }> {
  const client = await pool.connect();
  client.on('error', ignoreHeldClientError);
  return {
    client,
    release: (failure) => {
      client.off('error', ignoreHeldClientError);
      client.release(failure);
    },
  };
}

/**
 * Runs `work` in one transaction on `client`: BEGIN, COMMIT when it returns, ROLLBACK when it
 * throws (the error it threw is what the caller sees, never the rollback's).
 */
export async function inTransaction<T>(
  client: pg.ClientBase,
  work: (client: pg.ClientBase) => Promise<T>,
): Promise<T> {
  await client.query('BEGIN');
  try {
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

/** Runs `work` in one transaction on a client of its own (see withClient, inTransaction). */
export function withTransaction<T>(
  db: string | pg.Pool,
  work: (client: pg.ClientBase) => Promise<T>,
): Promise<T> {
  return withClient(db, (client) => inTransaction(client, work));
}
