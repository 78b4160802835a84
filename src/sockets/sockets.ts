/**
 * The ways a service socket gets in (system.md): systemd socket activation
 * (LISTEN_FDS), another process's fd table (pidfd_getfd), and, with the agent,
 * SCM_RIGHTS. Every path ends in checkSocket before anything is registered.
 */
import fs from 'node:fs';
import { SwitchyardError, isKernelError } from '../errors.js';
import { native, type SocketInfo } from '../kernel/native.js';
import { AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_STREAM } from '../kernel/linux.js';
import { type Address, type Family, parseAddress } from '../net/address.js';
import type { Protocol } from '../bindings/binding.js';


export interface CheckedSocket {
  family: Family;
  protocol: Protocol;
  info: SocketInfo;
}

export function describeSocket(info: SocketInfo): string {
  const proto = info.protocol === IPPROTO_TCP ? 'tcp' : info.protocol === IPPROTO_UDP ? 'udp' : `proto ${info.protocol}`;
  const addr = info.domain === AF_INET6 ? `[${info.address}]` : info.address;
  return `${proto} ${addr}:${info.port}`;
}

/**
 * A socket may be dispatched to only if the kernel could deliver a new flow
 * to it: a listening TCP socket or an unconnected UDP socket, IPv6 ones
 * V6ONLY (an IPv6 destination never receives IPv4), and in the namespace
 * whose packets it will get.
 */
export function checkSocket(info: SocketInfo, netnsIno: number): CheckedSocket {
  const what = describeSocket(info);
  const reject = (why: string): never => {
    throw new SwitchyardError('ESOCKET_REJECTED', `socket ${what}: ${why}`, { entry: what });
  };
  if (info.domain !== AF_INET && info.domain !== AF_INET6) reject('not an IPv4 or IPv6 socket');
  let protocol: Protocol;
  if (info.type === SOCK_STREAM && info.protocol === IPPROTO_TCP) {
    if (!info.listening) reject('TCP socket is not listening');
    protocol = 'tcp';
  } else if (info.type === SOCK_DGRAM && info.protocol === IPPROTO_UDP) {
    if (info.connected) reject('UDP socket is connected');
    protocol = 'udp';
  } else {
    return reject('neither TCP nor UDP');
  }
  if (info.domain === AF_INET6 && !info.v6only) reject('IPv6 socket without IPV6_V6ONLY (it would also take IPv4)');
  if (info.netnsIno !== netnsIno) reject(`belongs to network namespace ${info.netnsIno}, not ${netnsIno}`);
  return { family: info.domain === AF_INET ? 4 : 6, protocol, info };
}

/**
 * Sockets passed by systemd: fds 3 .. 3 + LISTEN_FDS - 1, only when
 * LISTEN_PID is ours (sd_listen_fds(3)).
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number[] {
  const count = Number(env.LISTEN_FDS ?? '0');
  if (env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) !== pid) return [];
  if (!Number.isInteger(count) || count <= 0) return [];
  return Array.from({ length: count }, (_, i) => 3 + i);
}

function sameAddress(text: string, want: Address): boolean {
  const got = parseAddress(text);
  return !!got && got.family === want.family && got.words.every((w, i) => w === want.words[i]);
}

/**
 * Duplicates the sockets of process `pid` bound to (protocol, address, port)
 * with pidfd_getfd (needs ptrace access to the target). Returns owned fds.
 */
export function socketsOfProcess(pid: number, protocol: Protocol, address: Address, port: number): number[] {
  const pidfd = native().pidfdOpen(pid);
  const found: number[] = [];
  try {
    const fdDir = `/proc/${pid}/fd`;
    for (const entry of fs.readdirSync(fdDir)) {
      let target: string;
      try {
        target = fs.readlinkSync(`${fdDir}/${entry}`);
      } catch {
        continue; // closed meanwhile
      }
      if (!target.startsWith('socket:')) continue;
      let fd: number;
      try {
        fd = native().pidfdGetfd(pidfd, Number(entry));
      } catch (err) {
        if (isKernelError(err, 'EBADF')) continue;
        throw err;
      }
      let keep = false;
      try {
        const info = native().socketInfo(fd);
        const proto = info.protocol === IPPROTO_TCP ? 'tcp' : info.protocol === IPPROTO_UDP ? 'udp' : undefined;
        keep = proto === protocol && info.port === port && sameAddress(info.address, address);
      } catch {
        keep = false;
      }
      if (keep) found.push(fd);
      else fs.closeSync(fd);
    }
  } finally {
    fs.closeSync(pidfd);
  }
  return found;
}
