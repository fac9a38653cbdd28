;;; qwen-lsp.el --- qwen-lsp completion through eglot  -*- lexical-binding: t; -*-

;; Load this file (or copy the forms into your init file) to use qwen-lsp,
;; the Qwen-Coder completion language server, with eglot (1.9 or newer).
;;
;;   (load "/path/to/qwen-lsp/editors/emacs/qwen-lsp.el")
;;   M-x eglot  in a Python buffer, then M-x completion-at-point (C-M-i)
;;
;; Completion items come with a one-line label and a `textEdit' carrying the
;; whole suggestion (absolute indentation), which eglot inserts verbatim
;; when you pick the item.  Eglot has no inline (ghost text) completion.
;;
;; Eglot runs one server per buffer.  To keep your usual server (pyright,
;; pylsp, ...) for everything else, put a multiplexer such as
;; rassumfrassum in front of both, or use qwen-lsp only in the modes where
;; you don't need another server: see editors/README.md.

;;; Code:

(require 'eglot)

(defgroup qwen-lsp nil
  "Qwen-Coder completion through eglot."
  :group 'eglot)

(defcustom qwen-lsp-command '("qwen-lsp")
  "Command and arguments that start the qwen-lsp server over stdio."
  :type '(repeat string))

(defcustom qwen-lsp-modes
  '(python-mode python-ts-mode js-mode js-ts-mode typescript-ts-mode
    go-mode go-ts-mode rust-mode rust-ts-mode c-mode c-ts-mode c++-mode
    c++-ts-mode java-mode java-ts-mode sh-mode emacs-lisp-mode)
  "Major modes in which eglot starts qwen-lsp."
  :type '(repeat symbol))

(defcustom qwen-lsp-initialization-options nil
  "Plist sent as initializationOptions, e.g. (:model \"qwen3-coder-flash\").
Same keys as the \"qwen\" section of `eglot-workspace-configuration'."
  :type 'plist)

(defun qwen-lsp--contact (&optional _interactive)
  "Eglot contact: the server command plus its initializationOptions."
  (append qwen-lsp-command
          (list :initializationOptions
                (or qwen-lsp-initialization-options
                    ;; An empty JSON object, not null.
                    (make-hash-table)))))

(defun qwen-lsp-register ()
  "Make eglot start qwen-lsp in `qwen-lsp-modes' (put first, so it wins)."
  (add-to-list 'eglot-server-programs
               (cons qwen-lsp-modes #'qwen-lsp--contact)))

(qwen-lsp-register)

;; Settings answered on workspace/configuration (section "qwen") and sent
;; with workspace/didChangeConfiguration.  Per project, in .dir-locals.el:
;;
;;   ((nil . ((eglot-workspace-configuration
;;             . (:qwen (:model "qwen3-coder-flash" :maxTokens 128))))))
;;
;; or globally:
;;
;;   (setq-default eglot-workspace-configuration
;;                 '(:qwen (:model "qwen3-coder-flash" :maxTokens 128)))

(provide 'qwen-lsp)
;;; qwen-lsp.el ends here
