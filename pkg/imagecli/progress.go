package imagecli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progress shows how far a long operation (a merge) got, on stderr: a bar
// redrawn in place on a terminal, a plain line every 10% otherwise (a log
// file or a pipe gets a few lines, not a stream of carriage returns).
// Nothing is shown for an operation that ends within quiet: a short merge
// prints only its result.
type progress struct {
	w     io.Writer
	what  string // "merging"
	tty   bool
	quiet time.Duration
	now   func() time.Time

	mu        sync.Mutex
	began     time.Time
	lastDraw  time.Time
	lastTenth int64 // the last 10% step printed as a line
	drawn     bool  // a bar is on the current terminal line
}

// Timing of the progress display.
const (
	progressQuiet  = time.Second            // nothing before this
	progressRedraw = 100 * time.Millisecond // the bar's redraw rate
	barWidth       = 30
)

func newProgress(w io.Writer, what string) *progress {
	return &progress{w: w, what: what, tty: isTerminal(w), quiet: progressQuiet, now: time.Now,
		began: time.Now(), lastTenth: -1}
}

// isTerminal reports whether w is a terminal (TCGETS succeeds on it).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// update reports done of total bytes; safe from any goroutine.
func (p *progress) update(done, total int64) {
	if total <= 0 {
		return
	}
	done = min(max(done, 0), total)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Sub(p.began) < p.quiet {
		return
	}
	if p.tty {
		if now.Sub(p.lastDraw) >= progressRedraw || done == total {
			p.lastDraw = now
			p.drawBar(done, total)
		}
		return
	}
	if tenth := done * 10 / total; tenth > p.lastTenth {
		p.lastTenth = tenth
		fmt.Fprintf(p.w, "%s: %3d%% (%s of %s)\n", p.what, tenth*10, FormatSize(done), FormatSize(total))
	}
}

func (p *progress) drawBar(done, total int64) {
	fill := int(done * barWidth / total)
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%%  %s / %s\x1b[K", p.what, strings.Repeat("#", fill),
		strings.Repeat("-", barWidth-fill), done*100/total, FormatSize(done), FormatSize(total))
	p.drawn = true
}

// finish ends the bar's line, so that what follows starts on its own.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
