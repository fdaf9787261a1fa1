import { useCallback, useEffect, useState } from "react";
import { Login } from "./Login.jsx";
import { Mail } from "./Mail.jsx";
import { askOtherTabs, clearSession, readSession, saveSession, shareSession, tellSignedOut } from "./session.js";

export function App() {
  const [session, setSession] = useState(readSession);
  const onLogin = (s) => { saveSession(s); setSession(s); };
  const onLogout = useCallback(() => { clearSession(); tellSignedOut(); setSession(null); }, []);
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
