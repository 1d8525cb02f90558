/** The 4096 bytes of a crash-test value. */
export function encode(value: string): Buffer;
/** The crash-test value a block holds. */
export function decode(b: Buffer): string;
