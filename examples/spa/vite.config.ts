import { defineConfig } from 'vite';

// The app must be served from exactly http://localhost:5173: that is the one origin
// the built-in `dev-spa` client allows (CORS and the Origin check of the token
// endpoint), and its registered redirect URI is http://localhost:5173/callback.
// strictPort fails instead of moving to 5174, which the issuer refuses.
// appType 'spa' (Vite's default, written out because /callback depends on it): the
// dev server and `vite preview` answer index.html for any path that is not a file,
// so the issuer's redirect to /callback loads the app. A static host in production
// needs the same rewrite for /callback.
export default defineConfig({
  appType: 'spa',
  server: { host: 'localhost', port: 5173, strictPort: true },
  preview: { host: 'localhost', port: 5173, strictPort: true },
  build: { target: 'es2022' },
});
