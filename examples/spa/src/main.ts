/**
 * The UI: "Sign in" (the issuer's page, coming back on /callback), the password form,
 * the signed-in user, the access token's schedule and the session list. Server data is
 * only ever written with `textContent` (never innerHTML), so an e-mail address or a
 * user agent cannot inject markup.
 */
import './style.css';
import { CALLBACK_PATH, IssuerError, SignInError, TokenClient, type Session } from './auth';
import { loadConfig } from './config';

function el<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} is missing from index.html`);
  return found as T;
}

type State = 'loading' | 'signed-out' | 'signed-in';

/** Shows one of the three screens; `data-state` on <body> tells tests where we are. */
function show(state: State): void {
  document.body.dataset.state = state;
  el('loading').hidden = state !== 'loading';
  el('signed-out').hidden = state !== 'signed-out';
  el('signed-in').hidden = state !== 'signed-in';
  el('issuer-session').hidden = state === 'loading';
}

/** The server's `error_description`, with its code and request id for a bug report. */
function describe(err: unknown): string {
  if (err instanceof IssuerError) {
    const code = err.reason ? `${err.code}, ${err.reason}` : err.code;
    const id = err.requestId ? `; request id ${err.requestId}` : '';
    return `${err.message} (${code}${id})`;
  }
  if (err instanceof SignInError) return `Sign-in failed: ${err.message} (${err.code})`;
  return err instanceof Error ? err.message : String(err);
}

function showError(err: unknown): void {
  el('notice').hidden = true;
  el('error').textContent = describe(err);
  el('error').hidden = false;
}

function showNotice(text: string): void {
  el('error').hidden = true;
  el('notice').textContent = text;
  el('notice').hidden = false;
}

function clearMessages(): void {
  el('error').hidden = true;
  el('notice').hidden = true;
}

const time = (ms: number | string): string => new Date(ms).toLocaleTimeString();
const dateTime = (iso: string): string => new Date(iso).toLocaleString();

/** Runs a button's action with the button disabled; failures are shown, not thrown. */
function action(button: HTMLButtonElement, run: () => Promise<void>): void {
  button.disabled = true;
  clearMessages();
  run()
    .catch(showError)
    .finally(() => {
      button.disabled = false;
    });
}

async function main(): Promise<void> {
  const config = await loadConfig();
  el('issuer').textContent = config.issuer;
  const auth = new TokenClient(config.issuer);
  el<HTMLAnchorElement>('issuer-sign-out').href = auth.signOutPage;

  const renderTokenStatus = (): void => {
    const { expiresAt, refreshAt } = auth.expiry;
    el('token-status').textContent =
      `Access token (in memory only) valid until ${time(expiresAt)}; ` +
      `silent refresh planned at ${time(refreshAt)}.`;
    const jkt = auth.boundTo;
    el('dpop-jkt').textContent = jkt ?? '';
    el('dpop-status').hidden = jkt === null;
  };

  const renderSessions = (sessions: Session[]): void => {
    const rows = sessions.map((session) => {
      const tr = document.createElement('tr');
      tr.className = session.current ? 'current' : '';
      tr.dataset.sessionId = session.id;
      const cells = [
        session.client_id + (session.current ? ' (this browser)' : ''),
        dateTime(session.created_at),
        dateTime(session.last_used_at),
        session.last_ip ?? '',
        session.user_agent ?? '',
      ];
      for (const [i, text] of cells.entries()) {
        const td = document.createElement('td');
        td.textContent = text;
        if (i === 4) td.className = 'agent';
        tr.append(td);
      }
      const end = document.createElement('button');
      end.type = 'button';
      end.className = 'secondary end-session';
      end.textContent = session.current ? 'Log out' : 'End';
      end.addEventListener('click', () =>
        action(end, async () => {
          await auth.endSession(session);
          if (!session.current) {
            showNotice('Session ended: that device is signed out.');
            renderSessions(await auth.sessions());
          }
        }),
      );
      const td = document.createElement('td');
      td.append(end);
      tr.append(td);
      return tr;
    });
    el('sessions').querySelector('tbody')?.replaceChildren(...rows);
  };

  /** After a login or a restored session: who am I, and where am I signed in. */
  const loadSignedIn = async (): Promise<void> => {
    const [user, sessions] = await Promise.all([auth.me(), auth.sessions()]);
    el('user-email').textContent = user.email;
    el('user-id').textContent = user.id;
    el('user-created').textContent = dateTime(user.created_at);
    renderTokenStatus();
    renderSessions(sessions);
    show('signed-in');
  };

  auth.onEvent((event) => {
    if (event.type === 'refreshed') renderTokenStatus();
    if (event.type === 'signed-out') {
      show('signed-out');
      if (event.error) showError(event.error);
    }
  });

  const email = el<HTMLInputElement>('email');
  const password = el<HTMLInputElement>('password');
  const form = el<HTMLFormElement>('credentials');

  el('sign-in').addEventListener('click', () => action(el('sign-in'), () => auth.beginSignIn()));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    action(el('login'), async () => {
      await auth.login(email.value, password.value);
      password.value = '';
      await loadSignedIn();
    });
  });
  el('register').addEventListener('click', () => {
    if (!form.reportValidity()) return;
    action(el('register'), async () => {
      const user = await auth.register(email.value, password.value);
      showNotice(`Account created for ${user.email}. You can log in now.`);
    });
  });
  el('refresh').addEventListener('click', () =>
    action(el('refresh'), async () => {
      await auth.refresh();
      showNotice('Access token refreshed.');
    }),
  );
  el('reload-sessions').addEventListener('click', () =>
    action(el('reload-sessions'), async () => renderSessions(await auth.sessions())),
  );
  el('logout').addEventListener('click', () =>
    action(el('logout'), async () => {
      await auth.logout();
      showNotice('Logged out of this app.');
    }),
  );

  show('loading');
  // Back from the issuer's sign-in page: the code and the state leave the address bar
  // (and this history entry) at once, then the code is exchanged. If that fails, the
  // error stays on screen and the page goes on as any other load.
  if (location.pathname === CALLBACK_PATH) {
    const callback = new URL(location.href);
    history.replaceState(null, '', import.meta.env.BASE_URL);
    try {
      await auth.completeSignIn(callback);
      await loadSignedIn();
      return;
    } catch (err) {
      showError(err);
    }
  }
  // A reload forgot the access token; the HttpOnly cookie may still hold a session.
  if (await auth.restore()) await loadSignedIn();
  else show('signed-out');
}

main().catch((err: unknown) => {
  show('signed-out');
  showError(err);
});
