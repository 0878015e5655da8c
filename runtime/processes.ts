// Other processes of this machine, as the run lock (train/run-lock.ts) and the data cache's
// half-written entries (data/prepare.ts) see them: alive or gone, by pid.

/** Whether a process of this machine is alive (EPERM: alive, but another user's). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
