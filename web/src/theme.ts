// Light / dark / system theme, stored in the session.
import { current, setTheme, update, type Theme } from './session';

/** Applies a theme to the page; `system` follows the browser's prefers-color-scheme. */
export function applyTheme(theme: Theme): void {
  if (theme === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

/** The theme being shown (resolving `system`). */
export function shownTheme(): 'light' | 'dark' {
  const t = current().theme;
  if (t !== 'system') return t;
  return window.matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

export function toggleTheme(): void {
  void update(setTheme(shownTheme() === 'dark' ? 'light' : 'dark'));
}
