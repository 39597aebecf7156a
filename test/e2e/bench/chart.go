package bench

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"sort"
	"time"

	"github.com/dhpp-io/dhpp/internal/plot"
)

// Colours per provisioner, and for the chart's furniture.
var (
	provColor = map[string]color.RGBA{
		"dhpp":       {R: 31, G: 119, B: 180, A: 255},
		"local-path": {R: 230, G: 110, B: 0, A: 255},
	}
	otherColor = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	ink        = color.RGBA{R: 20, G: 20, B: 20, A: 255}
	gridColor  = color.RGBA{R: 225, G: 225, B: 225, A: 255}
	paper      = color.RGBA{R: 255, G: 255, B: 255, A: 255}
)

// Chart layout in pixels.
const (
	panelW, panelH = 330, 250
	marginL        = 90
	marginT        = 70
	rowGap         = 60
	marginB        = 30
)

// metric is one chart row: which per-claim latency it plots.
type metric struct {
	title string
	raw   func(Result) []time.Duration
}

var metrics = []metric{
	{"PVC created -> Bound", func(r Result) []time.Duration { return r.BoundRaw }},
	{"pod created -> Running", func(r Result) []time.Duration { return r.RunningRaw }},
	{"PVC deleted -> PV gone", func(r Result) []time.Duration { return r.DeletedRaw }},
}

// logAxis maps seconds to a y pixel on a log10 scale between two whole
// decades, so a 10× gap between provisioners is the same height at every N.
type logAxis struct {
	loDecade, hiDecade int // 10^lo .. 10^hi seconds
	top, bottom        int // pixel rows of 10^hi and 10^lo
}

// newLogAxis spans the decades around min..max seconds (at least one).
func newLogAxis(minS, maxS float64, top, bottom int) logAxis {
	if minS <= 0 {
		minS = 0.01
	}
	if maxS < minS {
		maxS = minS
	}
	lo := int(math.Floor(math.Log10(minS)))
	hi := int(math.Ceil(math.Log10(maxS)))
	if hi <= lo {
		hi = lo + 1
	}
	return logAxis{loDecade: lo, hiDecade: hi, top: top, bottom: bottom}
}

// y is the pixel row of s seconds, clamped to the axis.
func (a logAxis) y(s float64) int {
	if s <= 0 {
		return a.bottom
	}
	f := (math.Log10(s) - float64(a.loDecade)) / float64(a.hiDecade-a.loDecade)
	f = math.Max(0, math.Min(1, f))
	return a.bottom - int(math.Round(f*float64(a.bottom-a.top)))
}

// decadeLabel prints 10^d seconds the way the axis shows it.
func decadeLabel(d int) string {
	v := math.Pow(10, float64(d))
	switch {
	case v < 1:
		return fmt.Sprintf("%gs", v)
	case v < 60:
		return fmt.Sprintf("%.0fs", v)
	default:
		return fmt.Sprintf("%.0fs", v)
	}
}

// jitter spreads dots of one column deterministically (the chart of the
// same results is the same picture).
func jitter(i, width int) int {
	h := uint32(i)*2654435761 + 12345
	return int(h>>8) % max(width, 1)
}

// Chart draws the latency distribution per N: one column of panels per N,
// one row per metric, and in each panel one strip of dots per provisioner
// with its p50 (thick bar), p95 (thin bar) and max (short bar).
func Chart(results []Result) (*image.RGBA, error) {
	if len(results) == 0 {
		return nil, fmt.Errorf("chart: no results")
	}
	var ns []int
	var provs []string
	seenN, seenP := map[int]bool{}, map[string]bool{}
	by := map[string]map[int]Result{}
	for _, r := range results {
		if !seenN[r.N] {
			seenN[r.N] = true
			ns = append(ns, r.N)
		}
		if !seenP[r.Provisioner] {
			seenP[r.Provisioner] = true
			provs = append(provs, r.Provisioner)
		}
		if by[r.Provisioner] == nil {
			by[r.Provisioner] = map[int]Result{}
		}
		by[r.Provisioner][r.N] = r
	}
	sort.Ints(ns)
	const title = "dhpp vs local-path-provisioner: latency per volume (log scale)"
	// Wide enough for the title and legend even with a single N.
	w := max(marginL+len(ns)*panelW+20, marginL+plot.TextWidth(title, 2)+20)
	h := marginT + len(metrics)*(panelH+rowGap) + marginB
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	plot.FillRect(img, 0, 0, w, h, paper)

	plot.Text(img, marginL, 12, title, ink, 2)
	lx := marginL
	for _, p := range provs {
		plot.FillRect(img, lx, 40, lx+14, 54, colorOf(p))
		plot.Text(img, lx+20, 40, p, ink, 2)
		lx += 20 + plot.TextWidth(p, 2) + 30
	}
	plot.Text(img, lx, 44, "thick bar p50, thin bar p95, short bar max", otherColor, 1)

	for mi, m := range metrics {
		top := marginT + mi*(panelH+rowGap) + 28
		bottom := top + panelH - 50
		minS, maxS := math.Inf(1), 0.0
		for _, r := range results {
			for _, d := range m.raw(r) {
				minS = math.Min(minS, d.Seconds())
				maxS = math.Max(maxS, d.Seconds())
			}
		}
		if maxS == 0 {
			minS, maxS = 0.1, 1
		}
		ax := newLogAxis(minS, maxS, top, bottom)
		plot.Text(img, 8, top-26, m.title, ink, 2)
		for d := ax.loDecade; d <= ax.hiDecade; d++ {
			y := ax.y(math.Pow(10, float64(d)))
			lbl := decadeLabel(d)
			plot.Text(img, marginL-8-plot.TextWidth(lbl, 1), y-3, lbl, ink, 1)
			plot.HLine(img, marginL, marginL+len(ns)*panelW, y, gridColor)
		}
		for ni, n := range ns {
			x0 := marginL + ni*panelW
			plot.VLine(img, x0, top, bottom, ink)
			plot.HLine(img, x0, x0+panelW, bottom, ink)
			plot.Text(img, x0+panelW/2-plot.TextWidth(fmt.Sprintf("N=%d", n), 2)/2, bottom+8, fmt.Sprintf("N=%d", n), ink, 2)
			colW := (panelW - 20) / max(len(provs), 1)
			for pi, p := range provs {
				r, ok := by[p][n]
				if !ok {
					continue
				}
				cx := x0 + 10 + pi*colW
				ds := m.raw(r)
				c := colorOf(p)
				if len(ds) == 0 {
					plot.Text(img, cx+8, (top+bottom)/2, "no data", otherColor, 1)
					continue
				}
				// Bars first, dots on top: a bar must not hide the values.
				s := Summarize(ds)
				plot.FillRect(img, cx+2, ax.y(s.P50.Seconds())-1, cx+colW-2, ax.y(s.P50.Seconds())+2, ink)
				plot.HLine(img, cx+2, cx+colW-2, ax.y(s.P95.Seconds()), ink)
				plot.HLine(img, cx+colW/3, cx+2*colW/3, ax.y(s.Max.Seconds()), ink)
				for i, d := range ds {
					x := cx + 8 + jitter(i, colW-16)
					plot.FillRect(img, x-1, ax.y(d.Seconds())-1, x+2, ax.y(d.Seconds())+2, c)
				}
				lbl := "p50 " + shortDur(s.P50)
				plot.Text(img, cx+colW/2-plot.TextWidth(lbl, 1)/2, bottom+30, lbl, c, 1)
			}
		}
	}
	return img, nil
}

func colorOf(p string) color.RGBA {
	if c, ok := provColor[p]; ok {
		return c
	}
	return otherColor
}

// shortDur fits a latency into a panel label.
func shortDur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// WriteChart draws the chart and saves it as a PNG at path.
func WriteChart(path string, results []Result) error {
	img, err := Chart(results)
	if err != nil {
		return err
	}
	return plot.SavePNG(path, img)
}
