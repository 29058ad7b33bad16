"""Log sources other than stdin and files: a supervised child process."""
