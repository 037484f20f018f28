// Command loggen appends CRI-format log lines to a file that KWOK serves as a
// container log, at a chosen rate and line size.
//
// Every line is
//
//	<RFC3339Nano UTC timestamp> <stream> F seq=<n> src=<label> <padding>
//
// so a reader can prove that no line was lost, duplicated or reordered: for one
// src the seq numbers must be consecutive.
//
// It can also rotate the file like the kubelet does (--rotate-every N: rename
// FILE to FILE.1 and continue in a new FILE) and simulate a container restart
// (--restart: move FILE to the previous-logs file and start a new FILE).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// criTimeLayout is RFC3339Nano with a fixed number of fractional digits, as the
// container runtimes write it (sorts lexically).
const criTimeLayout = "2006-01-02T15:04:05.000000000Z07:00"

type options struct {
	file         string
	count        int64
	rate         float64
	size         int
	src          string
	startSeq     int64
	stream       string
	rotateEvery  int64
	restart      bool
	previousFile string
	quiet        bool
}

func main() {
	var o options
	flag.StringVar(&o.file, "file", "", "log file to append to (required); parent directories are created")
	flag.Int64Var(&o.count, "count", 100, "number of lines to write (0 = until killed)")
	flag.Float64Var(&o.rate, "rate", 100, "lines per second (0 = as fast as possible)")
	flag.IntVar(&o.size, "size", 0, "minimum length in bytes of the message text (padded with 'x'); 0 = no padding")
	flag.StringVar(&o.src, "src", "", "source label written as src=<label> (default: the file's base name)")
	flag.Int64Var(&o.startSeq, "start-seq", 1, "first sequence number")
	flag.StringVar(&o.stream, "stream", "stdout", "CRI stream tag: stdout or stderr")
	flag.Int64Var(&o.rotateEvery, "rotate-every", 0, "after every N lines rename FILE to FILE.1 and start a new FILE (kubelet-style rotation); 0 = never")
	flag.BoolVar(&o.restart, "restart", false, "simulate a container restart before writing: move FILE to the previous-logs file and start a new FILE")
	flag.StringVar(&o.previousFile, "previous-file", "", "previous-logs file for --restart (default: FILE with .log replaced by .previous.log)")
	flag.BoolVar(&o.quiet, "quiet", false, "do not print the summary line on stderr")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: loggen --file PATH [--count N] [--rate L/s] [--size BYTES] [--src LABEL]\n"+
			"              [--start-seq N] [--stream stdout|stderr] [--rotate-every N] [--restart [--previous-file PATH]]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loggen:", err)
		os.Exit(1)
	}
}

func previousPath(file string) string {
	if strings.HasSuffix(file, ".log") {
		return strings.TrimSuffix(file, ".log") + ".previous.log"
	}
	return file + ".previous"
}

func run(o options) error {
	if o.file == "" {
		return errors.New("--file is required")
	}
	if o.stream != "stdout" && o.stream != "stderr" {
		return fmt.Errorf("--stream must be stdout or stderr, not %q", o.stream)
	}
	if o.rate < 0 || o.count < 0 || o.size < 0 || o.rotateEvery < 0 {
		return errors.New("--rate, --count, --size and --rotate-every must not be negative")
	}
	if o.src == "" {
		o.src = strings.TrimSuffix(filepath.Base(o.file), ".log")
	}
	if strings.ContainsAny(o.src, " \n") {
		return errors.New("--src must not contain spaces or newlines")
	}
	if err := os.MkdirAll(filepath.Dir(o.file), 0o755); err != nil {
		return err
	}
	if o.restart {
		prev := o.previousFile
		if prev == "" {
			prev = previousPath(o.file)
		}
		if err := os.Rename(o.file, prev); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("restart: %w", err)
		}
	}

	f, err := openAppend(o.file)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 256*1024)
	closeFile := func() error {
		if err := w.Flush(); err != nil {
			return err
		}
		return f.Close()
	}

	start := time.Now()
	var interval time.Duration
	if o.rate > 0 {
		interval = time.Duration(float64(time.Second) / o.rate)
	}
	line := make([]byte, 0, 256+o.size)
	var written, inFile int64
	seq := o.startSeq
	for o.count == 0 || written < o.count {
		if interval > 0 {
			due := start.Add(time.Duration(written) * interval)
			if d := time.Until(due); d > 0 {
				// Caught up: hand the complete lines to the reader before sleeping.
				if err := w.Flush(); err != nil {
					return err
				}
				time.Sleep(d)
			}
		}
		line = line[:0]
		line = time.Now().UTC().AppendFormat(line, criTimeLayout)
		line = append(line, ' ')
		line = append(line, o.stream...)
		line = append(line, " F seq="...)
		line = strconv.AppendInt(line, seq, 10)
		line = append(line, " src="...)
		line = append(line, o.src...)
		textLen := len("seq=") + len(strconv.FormatInt(seq, 10)) + len(" src=") + len(o.src)
		if pad := o.size - textLen - 1; pad > 0 {
			line = append(line, ' ')
			for i := 0; i < pad; i++ {
				line = append(line, 'x')
			}
		}
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return err
		}
		written++
		inFile++
		seq++
		if o.rotateEvery > 0 && inFile >= o.rotateEvery && (o.count == 0 || written < o.count) {
			if err := closeFile(); err != nil {
				return err
			}
			if err := os.Rename(o.file, o.file+".1"); err != nil {
				return fmt.Errorf("rotate: %w", err)
			}
			if f, err = openAppend(o.file); err != nil {
				return err
			}
			w.Reset(f)
			inFile = 0
		}
	}
	if err := closeFile(); err != nil {
		return err
	}
	if !o.quiet {
		el := time.Since(start)
		fmt.Fprintf(os.Stderr, "loggen: wrote %d lines (seq %d..%d, src=%s) to %s in %s (%.0f lines/s)\n",
			written, o.startSeq, seq-1, o.src, o.file, el.Round(time.Millisecond), float64(written)/el.Seconds())
	}
	return nil
}

func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}
