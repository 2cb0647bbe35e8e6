package boot

import (
	"slices"
	"testing"
)

func TestConsoleNames(t *testing.T) {
	procConsoles := "ttyS0                -W- (EC p a)    4:64\ntty0                 -WU (E  p  )    4:7\nnetcon0              -W- (E     )\nttyX                 --- (      )    4:9\n"
	if got, want := consoleNames(procConsoles), []string{"ttyS0", "tty0", "netcon0"}; !slices.Equal(got, want) {
		t.Errorf("consoleNames = %v, want %v", got, want)
	}
}
