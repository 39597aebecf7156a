package bench

import (
	"bytes"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLogAxis(t *testing.T) {
	tests := []struct {
		name         string
		min, max     float64
		lo, hi       int
		at           float64
		wantY        int
		top, bottom0 int
	}{
		// 0.1..10 s spans decades -1..1 over rows 0..200: 1 s is the middle.
		{"middle decade", 0.15, 9, -1, 1, 1, 100, 0, 200},
		{"bottom of the axis", 0.15, 9, -1, 1, 0.1, 200, 0, 200},
		{"top of the axis", 0.15, 9, -1, 1, 10, 0, 0, 200},
		{"clamped below", 0.15, 9, -1, 1, 0.001, 200, 0, 200},
		{"clamped above", 0.15, 9, -1, 1, 1000, 0, 0, 200},
		{"zero sits on the bottom", 0.15, 9, -1, 1, 0, 200, 0, 200},
		{"one value still spans a decade", 2, 2, 0, 1, 1, 300, 100, 300},
		{"non-positive min", 0, 0.5, -2, 0, 0.1, 200, 100, 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newLogAxis(tt.min, tt.max, tt.top, tt.bottom0)
			if a.loDecade != tt.lo || a.hiDecade != tt.hi {
				t.Fatalf("decades = %d..%d, want %d..%d", a.loDecade, a.hiDecade, tt.lo, tt.hi)
			}
			if got := a.y(tt.at); got != tt.wantY {
				t.Errorf("y(%v) = %d, want %d", tt.at, got, tt.wantY)
			}
		})
	}
}

func TestDecadeLabelAndShortDur(t *testing.T) {
	tests := []struct{ got, want string }{
		{decadeLabel(-1), "0.1s"},
		{decadeLabel(0), "1s"},
		{decadeLabel(2), "100s"},
		{shortDur(250 * time.Millisecond), "250ms"},
		{shortDur(12340 * time.Millisecond), "12.3s"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func series(base time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = base + time.Duration(i)*base/time.Duration(n)
	}
	return out
}

// colourRows returns the mean row of the pixels of colour c in columns
// [x0, x1) and rows [y0, y1), and how many there were.
func colourRows(t *testing.T, b []byte, c color.RGBA, x0, x1, y0, y1 int) (float64, int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	var sum, n int
	for y := y0; y < y1; y++ {
		for x := x0; x < x1; x++ {
			r, g, bb, _ := img.At(x, y).RGBA()
			if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bb>>8) == c.B {
				sum += y
				n++
			}
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(sum) / float64(n), n
}

func TestChartPlacesFasterProvisionerLower(t *testing.T) {
	results := []Result{
		{Provisioner: "dhpp", N: 10, BoundRaw: series(200*time.Millisecond, 10), RunningRaw: series(time.Second, 10), DeletedRaw: series(100*time.Millisecond, 10)},
		{Provisioner: "dhpp", N: 100, BoundRaw: series(300*time.Millisecond, 100), RunningRaw: series(2*time.Second, 100), DeletedRaw: series(100*time.Millisecond, 100)},
		{Provisioner: "local-path", N: 10, BoundRaw: series(5*time.Second, 10), RunningRaw: series(6*time.Second, 10), DeletedRaw: series(3*time.Second, 10)},
		{Provisioner: "local-path", N: 100, BoundRaw: series(30*time.Second, 100), RunningRaw: series(40*time.Second, 100)},
	}
	path := filepath.Join(t.TempDir(), "c.png")
	if err := WriteChart(path, results); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if minW := marginL + 2*panelW; img.Bounds().Dx() < minW {
		t.Errorf("width = %d, want at least %d (two N panels)", img.Bounds().Dx(), minW)
	}
	// Per row (metric) and N column: dhpp's dots sit lower on the picture
	// (larger y: shorter latency) than local-path's.
	for mi := range metrics {
		top := marginT + mi*(panelH+rowGap) + 28
		bottom := top + panelH - 50
		for ni, n := range []int{10, 100} {
			x0 := marginL + ni*panelW
			dy, dn := colourRows(t, b, provColor["dhpp"], x0, x0+panelW, top, bottom+1)
			ly, ln := colourRows(t, b, provColor["local-path"], x0, x0+panelW, top, bottom+1)
			if dn == 0 {
				t.Errorf("metric %d N=%d: no dhpp dots", mi, n)
				continue
			}
			if mi == 2 && n == 100 {
				if ln != 0 {
					t.Errorf("local-path N=100 has no deletion data but %d pixels were drawn", ln)
				}
				continue
			}
			if ln == 0 || dy <= ly {
				t.Errorf("metric %d N=%d: dhpp mean row %.0f (%d px), local-path %.0f (%d px): want dhpp below", mi, n, dy, dn, ly, ln)
			}
		}
	}
}

func TestChartRejectsNoResults(t *testing.T) {
	if _, err := Chart(nil); err == nil {
		t.Error("Chart(nil) succeeded, want an error")
	}
}
