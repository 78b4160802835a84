/**
 * Snapshots compressed on the wire. A snapshot is the whole state (7 MB of
 * JSON at 100,000 bindings) and goes to every agent that needs one, so a
 * fleet's snapshot costs agents × its size in TLS on both ends; gzip makes
 * it several times smaller and is made once per version by the control
 * plane. An agent asks for it in its hello (capability SNAPSHOT_GZIP); it
 * then comes as a binary frame holding the gzip of the same text. A frame
 * of text starts with `{`, so the gzip magic tells them apart. The text
 * is bounded as a text frame is: inflating stops at the frame size limit.
 */
import zlib from 'node:zlib';
import { SwitchyardError } from '../errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from './messages.js';

export const SNAPSHOT_GZIP = 'snapshot-gzip';

export const isGzip = (bytes: Uint8Array): boolean => bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;

/** A compressed frame's text, or an error as parseFrame gives for a frame over the limit or unreadable. */
export function gunzipFrame(bytes: Uint8Array, maxBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  try {
    return zlib.gunzipSync(bytes, { maxOutputLength: maxBytes });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) {
      throw new SwitchyardError('EINVAL_ARGUMENT', `frame: a compressed frame inflates to more than the ${maxBytes} allowed`, { entry: 'frame' });
    }
    throw new SwitchyardError('EINVAL_ARGUMENT', `frame: a compressed frame could not be inflated (${(err as Error).message})`, { entry: 'frame' });
  }
}

/** The frame's text compressed, off the event loop (zlib runs on libuv's pool). */
export function gzipFrame(text: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => zlib.gzip(text, { level: 6 }, (err, out) => (err ? reject(err) : resolve(out))));
}
