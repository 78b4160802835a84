/**
 * Errors Switchyard raises on purpose. `code` is stable and machine-readable
 * (tests and the CLI's --json output use it); `cause` keeps the kernel error
 * (with its own code/errno/syscall) when one is wrapped.
 */
export type ErrorCode =
  | 'EINVAL_BINDING'
  | 'EINVAL_ARGUMENT'
  | 'EINVAL_FILE'
  | 'ENOT_LOADED'
  | 'EINCOMPATIBLE_STATE'
  | 'EORPHAN'
  | 'ESTALE_STATE'
  | 'ENO_NETNS'
  | 'ECAPACITY'
  | 'ESOCKET_REJECTED'
  | 'ENO_SOCKETS'
  | 'EKERNEL'
  | 'EFIREWALL'
  | 'ECONTROL_PLANE'
  | 'ESTORE'
  | 'ESTORE_CONFLICT'
  | 'ESTORE_SCHEMA'
  | 'ESTORE_CORRUPT'
  | 'ESTORE_FENCED'
  | 'ENOT_LEADER'
  | 'EBUSY';

export class SwitchyardError extends Error {
  readonly code: ErrorCode;
  /** The input that caused the error (binding, file entry, argument), when there is one. */
  readonly entry?: string;

  constructor(code: ErrorCode, message: string, options: { entry?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SwitchyardError';
    this.code = code;
    if (options.entry !== undefined) this.entry = options.entry;
  }
}

/** An error thrown by the native addon: Node's shape (code, errno, syscall). */
export interface KernelError extends Error {
  code: string;
  errno: number;
  syscall: string;
  detail?: string;
}

export function isKernelError(err: unknown, code?: string): err is KernelError {
  return (
    err instanceof Error &&
    typeof (err as KernelError).syscall === 'string' &&
    (code === undefined || (err as KernelError).code === code)
  );
}
