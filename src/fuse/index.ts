/**
 * Public surface of the FUSE view: mount a Store as files
 * (DIR/volumes/<vol>, DIR/snapshots/<vol@snap>) and unmount it.
 */
export {
  mountStore, probeMountPoint, cleanStaleMount, FUSE_MAX_IO, ATTR_TIMEOUT_S,
  type FuseMount, type MountOptions, type MountPointState,
} from './mount.js';
export { VOLUMES_DIR, SNAPSHOTS_DIR, type IoObserver } from './operations.js';
