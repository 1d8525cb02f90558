export const BLOCKS: number;
export const HALF: number;
export function block(b: number, g: number): Buffer;
