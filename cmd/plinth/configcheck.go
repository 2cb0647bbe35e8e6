package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	boot "github.com/plinth-os/plinth/init"
	"github.com/plinth-os/plinth/init/config"
)

// checkReport is `plinth config check --json`'s answer.
type checkReport struct {
	File     string         `json:"file"`
	Valid    bool           `json:"valid"`
	Problems []checkProblem `json:"problems"`
}

// checkProblem is one problem; Line 0 is about the whole file (it could
// not be read, or is too large), Column 0 unknown.
type checkProblem struct {
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Key     string `json:"key,omitempty"`
	Message string `json:"message"`
	// Text is the line boot prints: "file:line: key: message".
	Text string `json:"text"`
}

func configCheckCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Check a machine config file offline, as a machine would at boot",
		Long: "check parses a machine config (the TOML file a machine boots with: hostname,\n" +
			"[boot], [network], [cluster]) with the parser and messages of boot itself, and\n" +
			"prints every problem as file:line: key: what is wrong. It exits 0 when the file\n" +
			"would boot as written, 1 when not. FILE - reads standard input. It needs no\n" +
			"cluster: the app flags of `plinth config` do not apply.",
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, name := args[0], args[0]
			if path == "-" {
				path, name = "/dev/stdin", "<stdin>"
			}
			report := checkReport{File: name, Problems: []checkProblem{}}
			_, _, err := boot.ReadMachineConfig(path, name)
			var cerr *config.Error
			switch {
			case errors.As(err, &cerr):
				for _, p := range cerr.Problems {
					report.Problems = append(report.Problems, checkProblem{Line: p.Line, Column: p.Column, Key: p.Key, Message: p.Msg, Text: p.String()})
				}
			case err != nil:
				// It names the file already.
				report.Problems = append(report.Problems, checkProblem{Message: err.Error(), Text: err.Error()})
			}
			report.Valid = len(report.Problems) == 0
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.SetEscapeHTML(false)
				if err := enc.Encode(report); err != nil {
					return err
				}
			} else if report.Valid {
				fmt.Fprintf(out, "%s: ok\n", name)
			} else {
				for _, p := range report.Problems {
					fmt.Fprintln(out, p.Text)
				}
				n := len(report.Problems)
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d %s: a machine booting it would stop in maintenance mode\n",
					name, n, plural(n, "problem", "problems"))
			}
			if !report.Valid {
				cmd.SilenceErrors = true
				return exitCode(1)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON report ({file, valid, problems: [{line, column, key, message, text}]})")
	return cmd
}
