/**
 * Public surface of the pager. Today: the test guest image builder (a real
 * bootable golden image from Debian packages). The VM runner, idleness,
 * working sets, page-out and sharing join here.
 */
export {
  buildTestGuest, defaultCacheDir, readImageMeta, metaPath, inputSnapshotName,
  BUILDER_VERSION, DEFAULT_IMAGE_SIZE, DEFAULT_CMDLINE, DEFAULT_HOSTNAME,
  type ImageMeta, type BuildOptions, type BuildResult,
} from './image.js';
