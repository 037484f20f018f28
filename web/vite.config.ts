import { defineConfig } from 'vite';

// Built assets land in dist/assets/ with a content hash in their names; the kubelens binary
// serves them as immutable (server.web_root = web/dist).
export default defineConfig({
  build: { outDir: 'dist', assetsDir: 'assets', sourcemap: false, target: 'es2022' },
  server: { proxy: { '/api': 'http://127.0.0.1:8080', '/console-config.json': 'http://127.0.0.1:8080' } },
  test: { environment: 'node', include: ['src/**/*.test.ts'] },
});
