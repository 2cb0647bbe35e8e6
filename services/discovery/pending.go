package discovery

// execResult mirrors what the host API's exec is getting; it goes when
// that lands.
type execResult struct {
	ExitCode int
	Output   string
}
