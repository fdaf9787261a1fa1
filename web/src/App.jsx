import { useCallback, useState } from "react";
import { Login } from "./Login.jsx";
import { Mail } from "./Mail.jsx";
import { clearSession, readSession, saveSession } from "./session.js";

export function App() {
  const [session, setSession] = useState(readSession);
  const onLogin = (s) => { saveSession(s); setSession(s); };
  const onLogout = useCallback(() => { clearSession(); setSession(null); }, []);
  return session ? <Mail session={session} onLogout={onLogout} /> : <Login onLogin={onLogin} />;
}
