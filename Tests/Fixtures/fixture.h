/*
 * What the fixtures share: fail(), which collects every problem found into
 * one line for the final report ("FAIL: a; b; c"). Header-only: each
 * fixture stays a single C file to compile.
 */
#ifndef CRYO_FIXTURE_H
#define CRYO_FIXTURE_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static char failbuf[4096];
__attribute__((unused, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
	size_t len = strlen(failbuf);
	if (len >= sizeof(failbuf) - 64)
		return;
	if (len)
		len += (size_t)snprintf(failbuf + len, sizeof(failbuf) - len, "; ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failbuf + len, sizeof(failbuf) - len, fmt, ap);
	va_end(ap);
	for (char *p = failbuf + len; *p; p++)   /* keep the report on one line */
		if ((unsigned char)*p < 0x20) *p = '.';
}

#endif
