;;; emacs_driver.el --- drive eglot + completion-at-point against qwen-lsp  -*- lexical-binding: t; -*-

;; Run: emacs --batch -Q -l emacs_driver.el
;; Environment: QWEN_TEST_EL (editors/emacs/qwen-lsp.el), QWEN_TEST_CMD (JSON
;; list: the server command), QWEN_TEST_FILE, QWEN_TEST_LINE (1-based; the
;; cursor goes to the end of that line), QWEN_TEST_OUT (result JSON).

(require 'package)
;; -Q skips Debian's site-start, which is what activates elpa-* packages.
(add-to-list 'package-directory-list "/usr/share/emacs/site-lisp/elpa")
(package-initialize)
(require 'json)

(defun qwen-test--env (name)
  (or (getenv name) (error "%s is not set" name)))

(defvar qwen-test--result nil)

(defun qwen-test--finish (err)
  (let ((out (qwen-test--env "QWEN_TEST_OUT"))
        (coding-system-for-write 'utf-8))
    (with-temp-file out
      (insert (json-encode
               `((error . ,err)
                 (eglot . ,(let ((desc (cadr (assq (quote eglot) package-alist))))
                             (and desc (package-version-join (package-desc-version desc)))))
                 (emacs . ,emacs-version)
                 (text . ,qwen-test--result)))))))

(condition-case err
    (progn
      (load (qwen-test--env "QWEN_TEST_EL"))
      (setq qwen-lsp-command
            (append (json-read-from-string (qwen-test--env "QWEN_TEST_CMD")) nil))
      (setq eglot-sync-connect t)
      (find-file (qwen-test--env "QWEN_TEST_FILE"))
      (eglot-ensure)
      ;; eglot-ensure connects from a hook; do it here synchronously.
      (let ((tries 0))
        (while (and (not (eglot-current-server)) (< tries 200))
          (accept-process-output nil 0.05)
          (setq tries (1+ tries))))
      (unless (eglot-current-server)
        (apply #'eglot (eglot--guess-contact)))
      (goto-char (point-min))
      (forward-line (1- (string-to-number (qwen-test--env "QWEN_TEST_LINE"))))
      (end-of-line)
      (completion-at-point)
      (setq qwen-test--result
            (buffer-substring-no-properties (point-min) (point-max)))
      (qwen-test--finish nil))
  (error
   (setq qwen-test--result (buffer-substring-no-properties (point-min) (point-max)))
   (qwen-test--finish (format "%S" err))))
(kill-emacs 0)
