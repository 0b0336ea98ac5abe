export * from './client.js';
export * from './keys.js';
export * from './zip.js';
export * from './upload.js';
export * from './presign.js';
