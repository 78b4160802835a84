/**
 * systemd's notification protocol (sd_notify(3)): READY=1 once the last
 * known good state is in force, WATCHDOG=1 at half the unit's WatchdogSec,
 * STOPPING=1 on the way out. Outside systemd ($NOTIFY_SOCKET unset) these
 * do nothing.
 */
import { native } from '../kernel/native.js';

export function notify(message: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const socket = env.NOTIFY_SOCKET;
  if (!socket) return false;
  native().sdNotify(socket, message);
  return true;
}

/** How often to ping the watchdog (half of WATCHDOG_USEC), when systemd asks this process to. */
export function watchdogPingMs(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 2000));
}
