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
	tolBand  = color.RGBA{R: 235, G: 245, B: 235, A: 255}
)

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
	// Whole tenths around the data, at least 0.8–1.1.
	lo = math.Min(0.8, math.Floor(lo*10)/10)
	hi = math.Max(1.1, math.Ceil(hi*10)/10)
	x := func(v float64) int { return labelW + int(math.Round((v-lo)/(hi-lo)*plotW)) }

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
	plot.Text(img, 10, 34, "median of paired rounds; shaded: target band; red: target missed", grey, 1)

	// Axis ticks every 0.1 with a grid line, the 1.0 line in ink.
	plotTop, plotBottom := chartTop+axisSpace-6, h-blockGap
	for v := lo; v <= hi+1e-9; v += 0.1 {
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
			plot.Text(img, x(math.Max(r.IOPS, 1))+6, y+2, lbl, ink, 1)
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
