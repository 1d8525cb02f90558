/** Process entry point used by bin/dormant. */
import { main } from './main.js';

await main(process.argv);
