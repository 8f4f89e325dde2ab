; LOFF Studio installer for Windows (NSIS 3): NOT BUILT OR TESTED IN CI.
; Written against the one-folder layout packaging/loff-studio.spec produces on Windows
; (dist\loff-studio\loff-studio.exe, loff.exe, _internal\...). To build, on Windows:
;   packaging\build.sh's PyInstaller line (python -m PyInstaller packaging\loff-studio.spec)
;   makensis /DVERSION=0.1.0 packaging\windows\loff-studio.nsi
; Per-user install (no administrator rights): %LOCALAPPDATA%\Programs\LOFF Studio, a Start
; menu shortcut with the app icon, and an entry in "Apps & features" that runs the uninstaller.
; Projects, settings and logs (in the user's AppData "LOFF Studio" folders) are kept on uninstall.

Unicode true
!ifndef VERSION
  !define VERSION "0.1.0"
!endif
!define APPNAME "LOFF Studio"
!define APPID "org.loff.Studio"
!define DIST "..\..\dist\loff-studio"
!define UNINSTKEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\${APPID}"

Name "${APPNAME} ${VERSION}"
OutFile "..\..\dist\loff-studio-${VERSION}-windows-x64-setup.exe"
InstallDir "$LOCALAPPDATA\Programs\${APPNAME}"
InstallDirRegKey HKCU "${UNINSTKEY}" "InstallLocation"
RequestExecutionLevel user
SetCompressor /SOLID lzma
Icon "..\..\resources\icons\loff-studio.ico"
UninstallIcon "..\..\resources\icons\loff-studio.ico"

!include "MUI2.nsh"
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Section "LOFF Studio" SecMain
  SetOutPath "$INSTDIR"
  File /r "${DIST}\*.*"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  CreateShortCut "$SMPROGRAMS\${APPNAME}.lnk" "$INSTDIR\loff-studio.exe" "" "$INSTDIR\loff-studio.exe" 0
  WriteRegStr HKCU "${UNINSTKEY}" "DisplayName" "${APPNAME}"
  WriteRegStr HKCU "${UNINSTKEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTKEY}" "Publisher" "The LOFF Studio developers"
  WriteRegStr HKCU "${UNINSTKEY}" "DisplayIcon" "$INSTDIR\loff-studio.exe"
  WriteRegStr HKCU "${UNINSTKEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTKEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegDWORD HKCU "${UNINSTKEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTKEY}" "NoRepair" 1
SectionEnd

Section "Uninstall"
  Delete "$SMPROGRAMS\${APPNAME}.lnk"
  ; exactly the installed folder (the bundle + uninstall.exe); user data lives elsewhere
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\loff-studio.exe"
  Delete "$INSTDIR\loff.exe"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKCU "${UNINSTKEY}"
SectionEnd
