/**
 * What the agent answers the control plane, said twice more: a log line
 * (an ACK at info, a NACK at warn, so `journalctl -p warning` lists the
 * refusals) and systemd's STATUS= (sd_notify), so `systemctl status
 * switchyard` shows what is in force without asking the admin socket:
 *
 *   serving version 7 of epoch e1, acknowledged at 2026-01-02T03:04:05.000Z
 *   refused version 8 of epoch e1: ECAPACITY; serving version 7
 */
import type { Logger } from 'pino';
import type { Frame } from '../protocol/messages.js';
import { notify } from './systemd.js';

/** What is in force (the session's applied state). */
export interface Serving {
  epoch: string;
  version: number;
  ackedAt: number;
}

/**
 * An epoch is the control plane's text: one STATUS= line may not carry a
 * line break (sd_notify's message is newline-separated assignments: an
 * epoch "x\nREADY=1" would be a second one), and it stays short enough to
 * read in `systemctl status`.
 */
function shown(epoch: string): string {
  const clean = epoch.replace(/[\x00-\x1f\x7f]/g, '?');
  return clean.length > 64 ? `${clean.slice(0, 63)}…` : clean;
}

const serving = (s: Serving | undefined, epoch?: string | null) =>
  s ? `serving version ${s.version}${epoch === s.epoch ? '' : ` of epoch ${shown(s.epoch)}`}` : 'serving nothing yet';

/** STATUS= at start: the last known good state restored, or none. */
export function readyStatus(s: Serving | undefined): string {
  return s ? `serving version ${s.version} of epoch ${shown(s.epoch)} (restored; acknowledged at ${new Date(s.ackedAt).toISOString()})` : 'no state yet; connecting to the control plane';
}

/** STATUS= after an ACK or a NACK; undefined for any other frame. */
export function answerStatus(frame: Frame, s: Serving | undefined, now = Date.now()): string | undefined {
  if (frame.type === 'ack') {
    // An ACK of the version already in force (a reconnect) keeps its first acknowledgement time, as `agent status` says.
    const at = s && s.epoch === frame.epoch && s.version === frame.version ? s.ackedAt : now;
    return `serving version ${frame.version} of epoch ${shown(frame.epoch)}, acknowledged at ${new Date(at).toISOString()}`;
  }
  if (frame.type === 'nack') {
    const what = frame.version === null ? 'a push it could not read' : `version ${frame.version}${frame.epoch === null ? '' : ` of epoch ${shown(frame.epoch)}`}`;
    return `refused ${what}: ${frame.code}; ${serving(s, frame.epoch)}`;
  }
  return undefined;
}

export class ServiceStatus {
  private notifyFailed = false;

  constructor(
    private readonly log: Logger,
    private readonly notifier: (message: string) => boolean = notify,
  ) {}

  /** READY=1 with the state in force. Not caught: an agent systemd cannot hear is not started (the unit is Type=notify). */
  ready(s: Serving | undefined): void {
    this.notifier(`READY=1\nSTATUS=${readyStatus(s)}`);
  }

  /** After a frame went to the control plane: an ACK or a NACK logged and shown in STATUS=. Never throws: the answer is already sent. */
  answered(frame: Frame, s: Serving | undefined): void {
    if (frame.type === 'ack') this.log.info({ frame: 'ack', version: frame.version }, 'acknowledged');
    else if (frame.type === 'nack') this.log.warn({ frame: 'nack', version: frame.version, code: frame.code, message: frame.message }, 'refused');
    const status = answerStatus(frame, s);
    if (status === undefined) return;
    try {
      this.notifier(`STATUS=${status}`);
      this.notifyFailed = false;
    } catch (err) {
      // Said once per run of failures: every push would say it again.
      if (!this.notifyFailed) this.log.warn({ err: (err as Error).message }, 'STATUS= could not be sent to systemd (sd_notify)');
      this.notifyFailed = true;
    }
  }
}
