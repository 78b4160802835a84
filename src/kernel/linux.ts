/** Linux UAPI constants (socket.h, in.h, bpf.h) that TypeScript needs. */
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
/** sk_lookup program verdict for "continue" (SK_DROP is 0). */
export const SK_PASS = 1;
