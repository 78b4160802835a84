/**
 * What every HTTPS route of the control plane shares: a request's JSON
 * body (bounded), its request id, and the error that answers with a status.
 * Transport-level, so that the API and the server both import it and
 * neither imports the other.
 */
import type { IncomingMessage } from 'node:http';

const MAX_BODY = 64 * 1024 * 1024;

/** An answer other than 2xx: `status`, and the field it is about. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** The client's X-Request-Id (one value, at most 128 printable characters), else null. */
export function requestIdOf(req: IncomingMessage): string | null {
  const v = req.headers['x-request-id'];
  const id = Array.isArray(v) ? v[0] : v;
  return id !== undefined && /^[\x21-\x7e]{1,128}$/.test(id) ? id : null;
}

/** A request's JSON body (undefined when empty), at most `max` bytes. */
export function readBody(req: IncomingMessage, max = MAX_BODY): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > max) {
        reject(new ApiError(413, `the body is larger than ${max} bytes`));
        req.destroy();
        return;
      }
      chunks.push(d);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve(undefined);
      try {
        resolve(JSON.parse(text));
      } catch (err) {
        reject(new ApiError(400, `the body is not JSON: ${(err as Error).message}`));
      }
    });
    req.on('error', reject);
  });
}
