// The error every layer may raise for a mistake the user can fix (a missing file, a batch of the
// wrong shape, a buffer over the adapter's limit): the CLIs print its message alone, without a
// stack trace. It lives at the bottom layer so that a backend or the runtime can raise it without
// importing the model loader.

/** A mistake the user can fix; the CLI prints its message alone, without a stack trace. */
export class UsageError extends Error {
  override name = 'UsageError';
}
