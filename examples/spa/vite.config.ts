import { defineConfig } from 'vite';

// The app must be served from exactly http://localhost:5173: that is the one origin
// the built-in `dev-spa` client allows (CORS and the Origin check of the token
// endpoint). strictPort fails instead of moving to 5174, which the issuer refuses.
export default defineConfig({
  server: { host: 'localhost', port: 5173, strictPort: true },
  preview: { host: 'localhost', port: 5173, strictPort: true },
  build: { target: 'es2022' },
});
