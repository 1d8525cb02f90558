import type { Store } from '../../src/blockstore/index.js';

/** Runs `body` with the store `opening` resolves to, and closes it afterwards, whatever happens. */
export async function withStore(opening: Promise<Store>, body: (store: Store) => Promise<void>): Promise<void> {
  const store = await opening;
  try {
    await body(store);
  } finally {
    await store.close();
  }
}
