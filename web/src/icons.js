// The client's icon set: lucide-react's inline SVGs (no font, no request: the CSP needs nothing
// more). Each renders aria-hidden; the control it sits in keeps its own accessible name.
import { File, Folder, Inbox, OctagonAlert, Send, Trash2, Archive } from "lucide-react";

export {
  Archive, ArrowLeft, Bell, BellPlus, Bold, File, Folder, FolderPlus, Forward, Inbox, Italic, Link, List, ListOrdered, LogOut,
  Mail, MailOpen, Monitor, Moon, OctagonAlert, Paperclip, Pencil, Reply, ReplyAll, Rows3, Rows4, Send,
  ShieldCheck, Smile, SquarePen, Star, Sun, Trash2, Underline, Volume2, VolumeX, X,
} from "lucide-react";

// The standard folders' own icons (bridge/mailbox_order.py); any other folder is a folder.
const FOLDER_ICONS = { INBOX: Inbox, Drafts: File, Sent: Send, Archive, Junk: OctagonAlert, Trash: Trash2 };
export const folderIcon = (name) => FOLDER_ICONS[name] || Folder;
