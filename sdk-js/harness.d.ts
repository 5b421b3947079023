import type { Projection } from './index.js';

/** Runs a projection natively against an in-memory view. */
export declare class Harness {
  constructor(projection: Projection);
  /** Records an event without applying it; returns its position. */
  record(stream: string, type: string, data?: unknown, metadata?: unknown): number;
  /** Records an event and applies it; throws if the projection refuses it. */
  append(stream: string, type: string, data?: unknown, metadata?: unknown): number;
  /** Applies what is recorded, in batches of `batch` events of the log. */
  catchUp(batch?: number): void;
  document<T = any>(key: string): T | undefined;
  text(key: string): string | undefined;
  documents(): Map<string, string>;
}
