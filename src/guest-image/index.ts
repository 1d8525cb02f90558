/**
 * The test guest: a bootable golden image (Debian kernel, busybox initramfs,
 * ext4 root with an HTTP status page) built from Debian packages into a cache.
 */
export {
  buildTestGuest, defaultCacheDir, readImageMeta, metaPath, inputSnapshotName,
  BUILDER_VERSION, DEFAULT_IMAGE_SIZE, DEFAULT_CMDLINE, DEFAULT_HOSTNAME,
  type ImageMeta, type BuildOptions, type BuildResult,
} from './builder.js';
