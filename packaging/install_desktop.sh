#!/usr/bin/env bash
# Put QLoRA Studio into the desktop's application menu (freedesktop: GNOME, KDE, Xfce, ...):
# the .desktop entry in ~/.local/share/applications and the icon in every size into the hicolor theme.
#   bash packaging/install_desktop.sh /path/to/qlora-studio      # the command the entry starts
#   bash packaging/install_desktop.sh --uninstall
# install.sh calls it with the virtual environment's command; for the PyInstaller bundle, pass
# dist/qlora-studio/qlora-studio.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ICONS="$HERE/../resources/icons"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
APPS="$DATA/applications"
THEME="$DATA/icons/hicolor"

if [ "${1:-}" = "--uninstall" ]; then
  rm -f "$APPS/qlora-studio.desktop" "$THEME"/*/apps/qlora-studio.png "$THEME/scalable/apps/qlora-studio.svg"
  echo "removed the QLoRA Studio menu entry"
  exit 0
fi
COMMAND="$(realpath "${1:?give the qlora-studio command to start, e.g. .venv/bin/qlora-studio}")"
[ -x "$COMMAND" ] || { echo "not an executable: $COMMAND" >&2; exit 2; }

for png in "$ICONS"/hicolor/*/apps/qlora-studio.png; do
  size="$(basename "$(dirname "$(dirname "$png")")")"
  install -D -m 644 "$png" "$THEME/$size/apps/qlora-studio.png"
done
install -D -m 644 "$ICONS/qlora-studio.svg" "$THEME/scalable/apps/qlora-studio.svg"
mkdir -p "$APPS"
# Exec= takes the absolute path (quoted: it may hold spaces), so the entry works without PATH changes.
sed "s|^Exec=.*|Exec=\"$COMMAND\"|; s|^TryExec=.*||" "$HERE/qlora-studio.desktop" > "$APPS/qlora-studio.desktop"
chmod 644 "$APPS/qlora-studio.desktop"
command -v desktop-file-validate >/dev/null && desktop-file-validate "$APPS/qlora-studio.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$APPS" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$THEME" || true
echo "menu entry: $APPS/qlora-studio.desktop -> $COMMAND"
