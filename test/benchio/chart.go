package benchio

import (
	"fmt"
	"image"
	"image/color"
	"math"

	"github.com/dhpp-io/dhpp/internal/plot"
)

var (
	ink      = color.RGBA{R: 20, G: 20, B: 20, A: 255}
	grey     = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	grid     = color.RGBA{R: 225, G: 225, B: 225, A: 255}
	paper    = color.RGBA{R: 255, G: 255, B: 255, A: 255}
	metColor = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	badColor = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	tolBand  = color.RGBA{R: 210, G: 235, B: 210, A: 255}
)

// ticks are the axis labels shown when in range.
var ticks = []float64{0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1, 1.25, 1.5, 2, 3, 5, 10}

// Chart layout in pixels.
const (
	labelW    = 250 // candidate names left of the bars
	plotW     = 520
	barH      = 12
	barGap    = 4
	headH     = 22 // a workload's title
	blockGap  = 10
	chartTop  = 60
	axisSpace = 30
)

// Chart draws the IOPS ratio of every candidate on every workload as
// horizontal bars around 1.0 (the plain directory), one block per
// workload; a bar outside its target is red, and the band of each row's
// tolerance is shaded.
func Chart(rows []Row) (*image.RGBA, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("chart: no rows")
	}
	lo, hi := 1.0, 1.0
	for _, r := range rows {
		lo, hi = math.Min(lo, r.IOPS), math.Max(hi, r.IOPS)
	}
	// A log axis: half and double the baseline are as far from 1.
	lo = math.Max(math.Min(lo*0.9, 0.8), 0.1)
	hi = math.Min(math.Max(hi*1.1, 1.25), 10)
	x := func(v float64) int {
		v = math.Max(lo, math.Min(hi, v))
		return labelW + int(math.Round((math.Log(v)-math.Log(lo))/(math.Log(hi)-math.Log(lo))*plotW))
	}

	wls := workloadsIn(rows)
	perBlock := map[string][]Row{}
	for _, r := range rows {
		perBlock[r.Workload] = append(perBlock[r.Workload], r)
	}
	h := chartTop + axisSpace
	for _, wl := range wls {
		h += headH + len(perBlock[wl])*(barH+barGap) + blockGap
	}
	w := labelW + plotW + 60
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	plot.FillRect(img, 0, 0, w, h, paper)
	plot.Text(img, 10, 10, "IOPS of a dhpp volume / IOPS of the plain directory", ink, 2)
	plot.Text(img, 10, 34, "median of paired runs, log scale. shaded: target band. red: target missed", grey, 1)

	// Axis ticks with grid lines, the 1.0 line in ink.
	plotTop, plotBottom := chartTop+axisSpace-6, h-blockGap
	for _, v := range ticks {
		if v < lo || v > hi {
			continue
		}
		xx := x(v)
		lbl := fmt.Sprintf("%.1f", v)
		plot.Text(img, xx-plot.TextWidth(lbl, 1)/2, chartTop+8, lbl, ink, 1)
		plot.VLine(img, xx, plotTop, plotBottom, grid)
	}
	y := chartTop + axisSpace
	for _, wl := range wls {
		plot.Text(img, 10, y+6, wl, ink, 2)
		y += headH
		for _, r := range perBlock[wl] {
			plot.FillRect(img, x(1-r.Tolerance), y-1, x(1+r.Tolerance), y+barH+1, tolBand)
			plot.Text(img, labelW-8-plot.TextWidth(r.Target, 1), y+2, r.Target, ink, 1)
			c := metColor
			if !r.Met() {
				c = badColor
			}
			x0, x1 := x(1), x(r.IOPS)
			if x1 < x0 {
				x0, x1 = x1, x0
			}
			plot.FillRect(img, x0, y, max(x1, x0+1), y+barH, c)
			lbl := fmt.Sprintf("%.2f", r.IOPS)
			plot.Text(img, max(x(r.IOPS), x(1))+6, y+2, lbl, ink, 1)
			y += barH + barGap
		}
		y += blockGap
	}
	plot.VLine(img, x(1), plotTop, plotBottom, ink)
	return img, nil
}

// WriteChart draws the chart and saves it as a PNG at path.
func WriteChart(path string, rows []Row) error {
	img, err := Chart(rows)
	if err != nil {
		return err
	}
	return plot.SavePNG(path, img)
}
