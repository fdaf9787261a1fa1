import DOMPurify from "dompurify";
import { useEffect, useRef, useState } from "react";
import { Bold, Italic, Link, List, ListOrdered, Smile, Underline } from "./icons.js";

// The message body: a contenteditable area with a small formatting toolbar and an emoji picker.
// The HTML it yields is the writer's own, but paste can bring anything: Compose sanitises it before
// sending. execCommand is deprecated yet still the only editing API every browser implements.
const EMOJI = [
  ["😀", "grinning face"], ["😂", "tears of joy"], ["😊", "smiling face"], ["😉", "winking face"],
  ["😍", "heart eyes"], ["🤔", "thinking face"], ["😅", "sweat smile"], ["😢", "crying face"],
  ["😮", "surprised face"], ["😎", "sunglasses"], ["🙏", "folded hands"], ["👍", "thumbs up"],
  ["👎", "thumbs down"], ["👏", "clapping hands"], ["🙌", "raised hands"], ["👋", "waving hand"],
  ["💪", "flexed biceps"], ["🎉", "party popper"], ["❤️", "red heart"], ["🔥", "fire"],
  ["✅", "check mark"], ["❌", "cross mark"], ["⚠️", "warning"], ["📎", "paperclip"],
  ["📅", "calendar"], ["☕", "coffee"], ["🚀", "rocket"], ["💡", "light bulb"],
];

// `initialHtml` (a forwarded mail's HTML, sanitised again here) wins over `initialText`.
export function RichEditor({ initialText, initialHtml, onInput }) {
  const ref = useRef(null);
  const [emoji, setEmoji] = useState(false);
  useEffect(() => {
    // Set once: React must not own the editable content, or it would reset the caret on every key.
    if (initialHtml) ref.current.innerHTML = DOMPurify.sanitize(initialHtml);
    else ref.current.innerText = initialText || "";
    onInput(ref.current, false);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);
  const run = (command, arg) => {
    ref.current.focus();
    document.execCommand(command, false, arg);
    onInput(ref.current, true);
  };
  const link = () => {
    const url = window.prompt("Link address (https://…)");
    if (url && /^(https?:|mailto:)/i.test(url.trim())) run("createLink", url.trim());
  };
  // onMouseDown + preventDefault keeps the editor's selection while a toolbar button is pressed.
  const tool = (label, icon, action) => (
    <button type="button" title={label} onMouseDown={(e) => e.preventDefault()} onClick={action}>
      {icon}<span className="sr-only">{label}</span>
    </button>
  );
  return (
    <div className="editor">
      <div className="toolbar" role="toolbar" aria-label="Formatting">
        {tool("Bold", <Bold />, () => run("bold"))}
        {tool("Italic", <Italic />, () => run("italic"))}
        {tool("Underline", <Underline />, () => run("underline"))}
        {tool("Bulleted list", <List />, () => run("insertUnorderedList"))}
        {tool("Numbered list", <ListOrdered />, () => run("insertOrderedList"))}
        {tool("Link", <Link />, link)}
        <button type="button" aria-expanded={emoji} title="Emoji" onMouseDown={(e) => e.preventDefault()} onClick={() => setEmoji(!emoji)}>
          <Smile /><span className="sr-only">Emoji</span>
        </button>
      </div>
      {emoji && (
        <div className="emoji" role="group" aria-label="Emoji picker">
          {EMOJI.map(([char, name]) => (
            <button type="button" key={name} aria-label={name} title={name} onMouseDown={(e) => e.preventDefault()} onClick={() => { run("insertText", char); setEmoji(false); }}>{char}</button>
          ))}
        </div>
      )}
      <div
        ref={ref}
        className="body-editor"
        contentEditable
        role="textbox"
        aria-multiline="true"
        aria-label="Message text"
        tabIndex={0}
        onInput={() => onInput(ref.current, true)}
      />
    </div>
  );
}
