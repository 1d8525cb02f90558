/** The part of fuse-native (a CommonJS package without types) that dormant uses. */
declare module 'fuse-native' {
  interface FuseOptions {
    timeout?: number | false;
    force?: boolean;
    mkdir?: boolean;
    maxRead?: number;
    fsname?: string;
    subtype?: string;
    autoCache?: boolean;
    kernelCache?: boolean;
    attrTimeout?: number;
    entryTimeout?: number;
    debug?: boolean;
    allowOther?: boolean;
    defaultPermissions?: boolean;
  }
  class Fuse {
    constructor(mnt: string, ops: Record<string, unknown>, opts?: FuseOptions);
    readonly mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    /** Builds the `-o` argument (internal, overridden to add options fuse-native does not know). */
    _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
  }
  export default Fuse;
}
