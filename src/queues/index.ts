export * from './contract.js';
export * from './payloads.js';
export * from './events.js';
export * from './keys.js';
export type { ParkedJob } from './dead-letter.js';
export { safeId } from '../ids.js';
export * from './event-stream.js';
export * from './connection.js';
export * from './schedules.js';
