// unbzip2-stream ships no types; this is the one call we make. It returns a classic
// (`through`) duplex stream: write compressed bytes in, read decompressed Buffers out.
declare module 'unbzip2-stream' {
  import type { Duplex } from 'node:stream';
  export default function unbzip2Stream(): Duplex;
}
