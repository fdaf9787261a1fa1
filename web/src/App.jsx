import { useCallback, useEffect, useState } from "react";
import { Login } from "./Login.jsx";
import { Mail } from "./Mail.jsx";
import { forgetNotices } from "./notices.js";
import { askOtherTabs, clearSession, readSession, saveSession, shareSession, tellSignedOut } from "./session.js";

export function App() {
  const [session, setSession] = useState(readSession);
  const onLogin = (s) => { saveSession(s); setSession(s); };
  // Signing out forgets the notification center's list too: the next person here must not read it.
  const onLogout = useCallback(() => { clearSession(); forgetNotices(); tellSignedOut(); setSession(null); }, []);
  useEffect(() => {
    const stop = shareSession({
      onShared: (s) => { saveSession(s); setSession(s); },
      onSignedOut: () => { clearSession(); setSession(null); },
    });
    if (!readSession()) askOtherTabs();
    return stop;
  }, []);
  return session ? <Mail session={session} onLogout={onLogout} /> : <Login onLogin={onLogin} />;
}
